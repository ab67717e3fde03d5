//! Asking agents for their flows over their sockets ([`super::server`]'s protocol) and
//! printing the answers; several agents' answers are merged in time order.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use super::ClientError;
use crate::flows::server::{Message, Request};
use crate::flows::table::Printer;

/// Asks the agent on `socket` and prints its answer (until it closes the connection).
pub fn query_agent<W: Write>(
    socket: &Path,
    req: &Request,
    printer: &mut Printer<W>,
) -> Result<(), ClientError> {
    read_messages(socket, req, |msg| print_message(printer, msg))?;
    printer.flush().map_err(ClientError::Output)
}

fn print_message<W: Write>(printer: &mut Printer<W>, msg: Message) -> Result<(), ClientError> {
    match msg {
        Message::Flow(r) => printer.flow(&r).map_err(ClientError::Output),
        Message::Lost { count } => printer.lost(count).map_err(ClientError::Output),
        Message::Error { message } => Err(ClientError::Refused { message }),
    }
}

/// Asks several agents (the nodes of a lab) and prints their flows merged: without
/// `--follow`, every agent's history sorted by time (the last N of all of them); with it,
/// records as they arrive from any agent. An agent that cannot be reached is reported and
/// skipped while another answers.
pub fn query_agents<W: Write>(
    sockets: &[PathBuf],
    req: &Request,
    printer: &mut Printer<W>,
) -> Result<(), ClientError> {
    if let [one] = sockets {
        return query_agent(one, req, printer);
    }
    let (tx, rx) = std::sync::mpsc::channel::<Result<Message, ClientError>>();
    for socket in sockets {
        let (tx, socket, req) = (tx.clone(), socket.clone(), req.clone());
        std::thread::spawn(move || {
            let sent = read_messages(&socket, &req, |m| {
                tx.send(Ok(m))
                    .map_err(|_| ClientError::Output(io::ErrorKind::BrokenPipe.into()))
            });
            if let Err(e) = sent {
                let _ = tx.send(Err(e));
            }
        });
    }
    drop(tx);
    let mut history: Vec<Message> = Vec::new();
    let mut failures = 0;
    for msg in rx {
        match msg {
            Ok(m) if req.follow => {
                print_message(printer, m)?;
                printer.flush().map_err(ClientError::Output)?;
            }
            Ok(m) => history.push(m),
            Err(e) => {
                failures += 1;
                if failures == sockets.len() {
                    return Err(e);
                }
                eprintln!("warning: {e}");
            }
        }
    }
    // Flow times are RFC 3339 in UTC with a fixed width: they sort as strings; the sort is
    // stable, so one agent's order is kept.
    let time = |m: &Message| match m {
        Message::Flow(r) => r.time.to_string(),
        _ => String::new(),
    };
    history.sort_by_key(time);
    let flows = history
        .iter()
        .filter(|m| matches!(m, Message::Flow(_)))
        .count();
    let skip = req.last.map_or(0, |n| flows.saturating_sub(n));
    let mut seen = 0;
    for m in history {
        if matches!(m, Message::Flow(_)) {
            seen += 1;
            if seen <= skip {
                continue;
            }
        }
        print_message(printer, m)?;
    }
    printer.flush().map_err(ClientError::Output)
}

/// Sends `req` to the agent on `socket` and hands each answer line to `on_msg` until the agent
/// closes the connection.
fn read_messages(
    socket: &Path,
    req: &Request,
    mut on_msg: impl FnMut(Message) -> Result<(), ClientError>,
) -> Result<(), ClientError> {
    let mut stream = UnixStream::connect(socket).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ClientError::NoAgent {
            socket: socket.into(),
            source,
        },
        io::ErrorKind::PermissionDenied => ClientError::PermissionDenied {
            socket: socket.into(),
            source,
        },
        _ => ClientError::Socket {
            socket: socket.into(),
            source,
        },
    })?;
    let socket_err = |source| ClientError::Socket {
        socket: socket.into(),
        source,
    };
    let mut line = serde_json::to_vec(req).expect("requests serialize");
    line.push(b'\n');
    stream.write_all(&line).map_err(socket_err)?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).map_err(socket_err)? == 0 {
            break;
        }
        let msg: Message =
            serde_json::from_str(&line).map_err(|source| ClientError::BadMessage {
                line: line.trim_end().to_string(),
                source,
            })?;
        on_msg(msg)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::flows::client::tests::{parse, ports_of, printer, rec};
    use crate::flows::rotate::tests::TempDir;
    use crate::flows::server::FlowServer;
    use crate::flows::store::FlowStore;
    use crate::flows::table::OutputFormat;

    #[test]
    fn a_missing_agent_is_named() {
        let dir = TempDir::new("flows-noagent");
        let sock = dir.0.join("flows.sock");
        let err = query_agent(
            &sock,
            &Request::default(),
            &mut printer(OutputFormat::Jsonl),
        )
        .unwrap_err();
        assert!(matches!(err, ClientError::NoAgent { .. }));
        assert_eq!(
            err.to_string(),
            format!(
                "no agent is listening on {} (is `enforcer agent` running? use --file to read a saved log)",
                sock.display()
            )
        );
        // A leftover socket file with nobody behind it is the same.
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        let err = query_agent(
            &sock,
            &Request::default(),
            &mut printer(OutputFormat::Jsonl),
        )
        .unwrap_err();
        assert!(matches!(err, ClientError::NoAgent { .. }), "{err:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queries_the_agent() {
        let dir = TempDir::new("flows-client");
        let sock = dir.0.join("flows.sock");
        let store = FlowStore::new(100);
        for i in 1..=5 {
            store.push(rec(i, i != 3, "2024-11-23T18:40:48.822Z"));
        }
        let server = tokio::spawn(FlowServer::bind(&sock, store).unwrap().run());
        let s = sock.clone();
        let (table, jsonl_out) = tokio::task::spawn_blocking(move || {
            let a = parse(&format!("--socket {} --verdict allowed", s.display())).unwrap();
            let mut p = printer(OutputFormat::Table);
            query_agent(
                &a.sockets[0],
                &a.request(&a.history(SystemTime::now())),
                &mut p,
            )
            .unwrap();
            let a = parse(&format!(
                "--socket {} --not --from-port 1 --last 2",
                s.display()
            ))
            .unwrap();
            let mut q = printer(OutputFormat::Jsonl);
            query_agent(
                &a.sockets[0],
                &a.request(&a.history(SystemTime::now())),
                &mut q,
            )
            .unwrap();
            (String::from_utf8(p.into_inner()).unwrap(), q.into_inner())
        })
        .await
        .unwrap();
        assert_eq!(
            table,
            "Nov 23 18:40:48.822  ALLOWED  ingress  dev/debug:3 -> prod/backend:8080 TCP SYN  \
             by prod/backend-from-frontend ingress[0]\n"
        );
        assert_eq!(ports_of(jsonl_out), [4, 5]);
        server.abort();
    }

    /// Two agents (a lab's nodes): their histories merge in time order, `--last` counts over
    /// both, and a missing third agent is skipped with a warning.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn merges_several_agents() {
        let dir = TempDir::new("flows-merge");
        let (sa, sb) = (dir.0.join("a.sock"), dir.0.join("b.sock"));
        let (a, b) = (FlowStore::new(100), FlowStore::new(100));
        a.push(rec(1, true, "2024-11-23T18:40:48.100Z"));
        b.push(rec(2, true, "2024-11-23T18:40:48.200Z"));
        a.push(rec(3, true, "2024-11-23T18:40:48.300Z"));
        b.push(rec(4, true, "2024-11-23T18:40:48.400Z"));
        let servers = [
            tokio::spawn(FlowServer::bind(&sa, a).unwrap().run()),
            tokio::spawn(FlowServer::bind(&sb, b).unwrap().run()),
        ];
        let missing = dir.0.join("c.sock");
        let (all, last) = tokio::task::spawn_blocking(move || {
            let sockets = [sa, sb, missing];
            let run = |args: &str| {
                let a = parse(args).unwrap();
                let mut p = printer(OutputFormat::Jsonl);
                query_agents(&sockets, &a.request(&a.history(SystemTime::now())), &mut p).unwrap();
                ports_of(p.into_inner())
            };
            (run("--all"), run("--last 3"))
        })
        .await
        .unwrap();
        assert_eq!(all, [1, 2, 3, 4]);
        assert_eq!(last, [2, 3, 4]);
        for s in servers {
            s.abort();
        }
    }
}
