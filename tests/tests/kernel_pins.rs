//! What a new agent does with the maps an earlier one pinned (`dataplane::layout`): it adopts
//! those whose layout it knows, starts disposable ones of an unknown layout empty, refuses the
//! others before changing anything, and sweeps pins it does not use. Needs root (BPF).

use std::path::{Path, PathBuf};

use aya::maps::{HashMap, Map, MapData};
use enforcer_agent::dataplane::Dataplane;
use enforcer_common::maps as names;
use enforcer_tests::privileged;

struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn map_id(pin_dir: &Path, name: &str) -> u32 {
    MapData::from_pin(pin_dir.join(name))
        .unwrap()
        .info()
        .unwrap()
        .id()
}

fn set_version(pin_dir: &Path, name: &str, version: u32) {
    let data = MapData::from_pin(pin_dir.join(names::LAYOUT)).unwrap();
    let mut map: HashMap<_, [u8; 16], u32> = HashMap::try_from(Map::HashMap(data)).unwrap();
    let mut key = [0u8; 16];
    key[..name.len()].copy_from_slice(name.as_bytes());
    map.insert(key, version, 0).unwrap();
}

fn version(pin_dir: &Path, name: &str) -> Option<u32> {
    let data = MapData::from_pin(pin_dir.join(names::LAYOUT)).unwrap();
    let map: HashMap<_, [u8; 16], u32> = HashMap::try_from(Map::HashMap(data)).unwrap();
    let mut key = [0u8; 16];
    key[..name.len()].copy_from_slice(name.as_bytes());
    map.get(&key, 0).ok()
}

#[test]
fn pins_of_an_unknown_layout_are_refused_untouched_or_started_empty() {
    if !privileged() {
        return;
    }
    let pins = Pins(PathBuf::from(format!(
        "/sys/fs/bpf/enforcer/test-pins-{}",
        std::process::id()
    )));
    let dir = pins.0.clone();
    let _ = std::fs::remove_dir_all(&dir);
    drop(Dataplane::open(&dir).expect("a fresh datapath"));
    assert_eq!(
        version(&dir, names::CONNTRACK),
        Some(1),
        "versions recorded"
    );
    let conntrack = map_id(&dir, names::CONNTRACK);
    let fragments = map_id(&dir, names::FRAGMENTS);

    // The same agent again: everything adopted.
    drop(Dataplane::open(&dir).expect("adopting its own pins"));
    assert_eq!(map_id(&dir, names::CONNTRACK), conntrack);
    assert_eq!(map_id(&dir, names::FRAGMENTS), fragments);

    // Conntrack pinned by an agent with another layout: refused, nothing changed.
    set_version(&dir, names::CONNTRACK, 7);
    let err = match Dataplane::open(&dir) {
        Ok(_) => panic!("a conntrack map of layout version 7 must not be adopted"),
        Err(e) => format!("{e}"),
    };
    assert!(
        err.contains(names::CONNTRACK) && err.contains("version 7"),
        "the error says which map and why: {err}"
    );
    assert!(err.contains("changes nothing"), "{err}");
    assert_eq!(map_id(&dir, names::CONNTRACK), conntrack, "untouched");
    assert_eq!(map_id(&dir, names::FRAGMENTS), fragments, "untouched");
    assert_eq!(version(&dir, names::CONNTRACK), Some(7), "not rewritten");

    // Fragment verdicts of another layout: disposable, started empty; the rest adopted.
    set_version(&dir, names::CONNTRACK, 1);
    set_version(&dir, names::FRAGMENTS, 9);
    drop(Dataplane::open(&dir).expect("migrating the fragment map"));
    assert_eq!(
        map_id(&dir, names::CONNTRACK),
        conntrack,
        "conntrack adopted"
    );
    assert_ne!(
        map_id(&dir, names::FRAGMENTS),
        fragments,
        "a new fragment map"
    );
    assert_eq!(version(&dir, names::FRAGMENTS), Some(1));

    // A pin of a map this agent does not use (an old name after a rename): swept.
    let stale = dir.join("FRAGMENTS");
    MapData::from_pin(dir.join(names::FRAGMENTS))
        .unwrap()
        .pin(&stale)
        .unwrap();
    drop(Dataplane::open(&dir).expect("adopting"));
    assert!(!stale.exists(), "the stale pin is removed");
    assert!(dir.join(names::FRAGMENTS).exists());
}
