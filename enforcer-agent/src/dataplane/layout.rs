//! The layout of the pinned maps, checked before an agent adopts them. A restarted or upgraded
//! agent reuses the maps an earlier agent pinned (the connections and NAT in force live in
//! them); it must never read or write a map whose layout it does not know.
//!
//! - The kernel says what a pinned map is (type, key and value sizes); this agent's object says
//!   what it expects. A map whose meaning changed without a size change is told apart by its
//!   layout version, which every agent records in the pinned `LAYOUT` map (absent: pins of an
//!   agent from before versioning, all at version 1).
//! - A map of unknown layout whose content can be lost (fragment verdicts, event ring, rate
//!   limits, counters, affinity) is migrated by starting it empty. Any other one makes the
//!   agent refuse to start, saying why, before it has changed anything: the datapath in force
//!   stays as the earlier agent left it.
//! - Pins this agent does not use (maps renamed by a layout change, links of interfaces that
//!   are gone) are swept once it has adopted the rest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aya::maps::MapData;
use enforcer_common::maps as names;

use super::{map_err, DataplaneError};

/// Each map's layout version: bumped when what a map's bytes mean changes without its sizes
/// changing (a renamed map starts over at 1).
pub const VERSIONS: [(&str, u32); 19] = [
    (names::ENDPOINTS, 1),
    (names::IDENTITY_ADDR, 1),
    (names::IDENTITY_V4, 1),
    (names::IDENTITY_V6, 1),
    (names::POLICY_EXACT, 1),
    (names::POLICY_RANGES, 1),
    (names::CONNTRACK, 1),
    (names::FRAGMENTS, 1),
    (names::CONFIG, 1),
    (names::DROP_RATELIMIT, 1),
    (names::FLOW_EVENTS, 1),
    (names::COUNTERS, 1),
    (names::SVC_FRONTENDS, 1),
    (names::SVC_BACKENDS, 1),
    (names::NAT_FWD, 1),
    (names::NAT_REV, 1),
    (names::SVC_AFFINITY, 1),
    (names::SVC_MEMBERS, 1),
    (names::LAYOUT, 1),
];

/// Maps whose content may be lost: started empty when their pinned layout is unknown.
const DISPOSABLE: [&str; 5] = [
    names::FRAGMENTS,
    names::FLOW_EVENTS,
    names::DROP_RATELIMIT,
    names::COUNTERS,
    names::SVC_AFFINITY,
];

/// What a map is, as the kernel and the object describe it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
}

/// What the check decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Pinned maps to remove before loading (started empty).
    pub migrate: Vec<String>,
    /// Why the agent must not adopt the pins (empty: it may).
    pub refuse: Vec<String>,
}

/// The shapes this agent's object defines.
pub fn expected(object: &[u8]) -> Result<BTreeMap<String, Shape>, String> {
    let obj = aya_obj::Object::parse(object).map_err(|e| e.to_string())?;
    Ok(obj
        .maps
        .iter()
        .map(|(name, m)| {
            (
                name.clone(),
                Shape {
                    map_type: m.map_type(),
                    key_size: m.key_size(),
                    value_size: m.value_size(),
                },
            )
        })
        .collect())
}

/// A map name as a `LAYOUT` key.
fn key(name: &str) -> [u8; 16] {
    let mut k = [0u8; 16];
    let n = name.len().min(15);
    k[..n].copy_from_slice(&name.as_bytes()[..n]);
    k
}

/// The versions recorded in the pinned `LAYOUT` map (`None`: it is not pinned).
pub fn recorded(pin_dir: &Path) -> Option<BTreeMap<String, u32>> {
    let data = aya::maps::MapData::from_pin(pin_dir.join(names::LAYOUT)).ok()?;
    let map: aya::maps::HashMap<_, [u8; 16], u32> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data)).ok()?;
    let mut out = BTreeMap::new();
    for (k, v) in map.iter().flatten() {
        let len = k.iter().position(|b| *b == 0).unwrap_or(16);
        out.insert(String::from_utf8_lossy(&k[..len]).into_owned(), v);
    }
    Some(out)
}

/// Decides, from each pinned map's shape (`pinned`: name -> shape, for the pins that exist)
/// and the recorded versions, what may be adopted.
pub fn plan(
    expected: &BTreeMap<String, Shape>,
    pinned: &BTreeMap<String, Shape>,
    recorded: Option<&BTreeMap<String, u32>>,
) -> Plan {
    let mut plan = Plan::default();
    for (name, version) in VERSIONS {
        let Some(have) = pinned.get(name) else {
            continue;
        };
        let problem = match expected.get(name) {
            Some(want) if want != have => Some(format!(
                "{name}: pinned as type {} with {}-byte keys and {}-byte values, this agent uses type {} with {} and {}",
                have.map_type, have.key_size, have.value_size, want.map_type, want.key_size, want.value_size
            )),
            Some(_) => {
                let was = recorded.map_or(Some(1), |r| r.get(name).copied());
                match was {
                    Some(v) if v == version => None,
                    Some(v) => Some(format!(
                        "{name}: pinned at layout version {v}, this agent uses version {version}"
                    )),
                    None => Some(format!(
                        "{name}: pinned, but the LAYOUT map does not record its layout version"
                    )),
                }
            }
            None => None,
        };
        match problem {
            None => {}
            Some(_) if DISPOSABLE.contains(&name) => plan.migrate.push(name.to_owned()),
            Some(p) => plan.refuse.push(p),
        }
    }
    plan
}

/// Records this agent's versions in the `LAYOUT` map it loaded.
pub fn write(
    map: &mut aya::maps::HashMap<aya::maps::MapData, [u8; 16], u32>,
) -> Result<(), aya::maps::MapError> {
    for (name, version) in VERSIONS {
        map.insert(key(name), version, 0)?;
    }
    Ok(())
}

/// Removes the map pins this agent does not use (old names of renamed maps); returns them.
pub fn sweep(pin_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(pin_dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = names::ALL.contains(&name.as_str()) || name == "links";
        if !ours && entry.path().is_file() && std::fs::remove_file(entry.path()).is_ok() {
            removed.push(entry.path());
        }
    }
    removed
}

/// Checks the pinned maps' layouts against `object`'s before anything is loaded ([`layout`]):
/// refuses pins of an unknown layout, starts disposable ones empty.
pub(super) fn check(pin_dir: &Path, object: &[u8]) -> Result<(), DataplaneError> {
    let expected = expected(object).map_err(|e| DataplaneError::Layout {
        pin_dir: pin_dir.into(),
        problems: vec![format!("the eBPF object does not parse: {e}")],
    })?;
    let mut pinned = BTreeMap::new();
    for name in names::ALL {
        let path = pin_dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = MapData::from_pin(&path)
            .and_then(|m| m.info())
            .map_err(map_err(name, "read the pinned map's layout"))?;
        let map_type = info
            .map_type()
            .map_err(map_err(name, "read the pinned map's type"))? as u32;
        pinned.insert(
            name.to_owned(),
            Shape {
                map_type,
                key_size: info.key_size(),
                value_size: info.value_size(),
            },
        );
    }
    let plan = plan(&expected, &pinned, recorded(pin_dir).as_ref());
    if !plan.refuse.is_empty() {
        return Err(DataplaneError::Layout {
            pin_dir: pin_dir.into(),
            problems: plan.refuse,
        });
    }
    for name in plan.migrate {
        tracing::warn!(map = %name, "pinned with a layout this agent does not know: started empty");
        let _ = std::fs::remove_file(pin_dir.join(&name));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(key: u32) -> Shape {
        Shape {
            map_type: 1,
            key_size: key,
            value_size: 8,
        }
    }

    fn maps(list: &[(&str, u32)]) -> BTreeMap<String, Shape> {
        list.iter()
            .map(|(n, k)| ((*n).to_owned(), shape(*k)))
            .collect()
    }

    #[test]
    fn every_map_has_a_version() {
        for name in names::ALL {
            assert!(VERSIONS.iter().any(|(n, _)| *n == name), "{name}");
        }
    }

    #[test]
    fn known_layouts_are_adopted_and_unknown_ones_refused_or_started_empty() {
        let want = maps(&[(names::CONNTRACK, 40), (names::FRAGMENTS, 16)]);
        // Same shapes, no LAYOUT file (pins from before versioning): adopted.
        assert_eq!(plan(&want, &want, None), Plan::default());
        // Nothing pinned yet: nothing to check.
        assert_eq!(plan(&want, &BTreeMap::new(), None), Plan::default());
        // A conntrack map of another size: refused, with what differs.
        let p = plan(&want, &maps(&[(names::CONNTRACK, 44)]), None);
        assert!(p.migrate.is_empty());
        assert_eq!(p.refuse.len(), 1);
        assert!(p.refuse[0].contains("44-byte keys"), "{:?}", p.refuse);
        // A fragment map of another size: started empty.
        let p = plan(&want, &maps(&[(names::FRAGMENTS, 12)]), None);
        assert_eq!(p.migrate, [names::FRAGMENTS]);
        assert!(p.refuse.is_empty());
        // Same sizes, another recorded version: refused.
        let recorded: BTreeMap<String, u32> = [(names::CONNTRACK.to_owned(), 7)].into();
        let p = plan(&want, &maps(&[(names::CONNTRACK, 40)]), Some(&recorded));
        assert_eq!(p.refuse.len(), 1, "{p:?}");
        assert!(p.refuse[0].contains("version 7"), "{:?}", p.refuse);
    }

    #[test]
    fn the_object_defines_every_map() {
        let want = expected(crate::dataplane::BPF_OBJECT).unwrap();
        for name in names::ALL {
            assert!(want.contains_key(name), "{name} is in the object");
        }
    }
}
