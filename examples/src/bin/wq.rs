//! `wq`: drive a running `work-queue-server` by hand, one call per invocation.
//!
//! ```text
//! wq create jobs
//! wq add jobs resize photo-1.jpg
//! wq start jobs
//! wq take jobs --wait-ms 1000
//! wq list
//! wq watch jobs        # prints the queue's events as they happen, until Ctrl-C
//! wq log deploy started
//! ```
//!
//! `watch` is a server-to-client stream: the server pushes each event as it happens, and
//! the watch has no deadline. `log` is a one-way call: nothing comes back.
//!
//! A command-line tool has no use for an async runtime of its own: `wq` uses the generated
//! blocking client, `WorkQueuesBlockingClient`, whose methods are plain functions (it runs
//! the connection on a background thread).
//!
//! Exit status: 0 on success, 1 if the service refused the request (no such queue, ...),
//! 2 if the call did not get through (server not running, deadline exceeded, ...),
//! 64 for a usage error.

use std::process::ExitCode;
use std::time::Duration;

use pipe_rpc_examples::{DEFAULT_PIPE, QueueError, QueueInfo, WorkItem, WorkQueuesBlockingClient};
use rpc_core::{ClientConfig, RpcError, ServerErrorKind, TransportError};

const USAGE: &str = "\
usage: wq [--pipe NAME] [--timeout-ms N] <command> [args]

commands:
  create QUEUE              create a queue (it starts out stopped)
  delete QUEUE              delete a queue and the work in it
  start QUEUE               let workers take work from a queue
  stop QUEUE                stop handing out work (adding still works)
  list                      show all queues
  add QUEUE KIND [PAYLOAD]  add a work item (PAYLOAD is text; default empty)
  take QUEUE [--wait-ms N]  take the oldest item, waiting up to N ms (default 0)
  watch QUEUE               print the queue's events as they happen, until Ctrl-C
                            (the queue need not exist yet)
  log TEXT...               append a line to the server's log (one-way: no reply)

options:
  --pipe NAME       the server's pipe (default: work-queues)
  --timeout-ms N    how long to wait for the server to answer, and for a busy
                    one to take the connection (default: 5000; a watch has no
                    deadline); a server that is not running is reported at once
  -h, --help        show this help

exit status: 0 ok, 1 refused by the service, 2 call failed, 64 usage error";

/// Exit status for a usage error (BSD `EX_USAGE`).
const EXIT_USAGE: u8 = 64;

/// One call to make.
#[derive(Debug)]
enum Command {
    Create(String),
    Delete(String),
    Start(String),
    Stop(String),
    List,
    Add { queue: String, item: WorkItem },
    Take { queue: String, wait_ms: u64 },
    Watch(String),
    Log(String),
}

#[derive(Debug)]
struct Args {
    pipe: String,
    timeout: Duration,
    command: Command,
}

/// Parses the command line; `Ok(None)` asks for help.
fn parse(args: impl IntoIterator<Item = String>) -> Result<Option<Args>, String> {
    let mut args = args.into_iter();
    let (mut pipe, mut timeout_ms, mut wait_ms) = (DEFAULT_PIPE.to_owned(), 5_000, None);
    let mut words = Vec::new();
    let number = |opt: &str, value: Option<String>| -> Result<u64, String> {
        let value = value.ok_or_else(|| format!("{opt} needs a value"))?;
        value.parse().map_err(|_| format!("{opt}: {value:?} is not a number of milliseconds"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--pipe" => pipe = args.next().ok_or("--pipe needs a value")?,
            "--timeout-ms" => timeout_ms = number("--timeout-ms", args.next())?,
            "--wait-ms" => wait_ms = Some(number("--wait-ms", args.next())?),
            // Everything after `--` is an argument, even if it starts with `-`.
            "--" => words.extend(args.by_ref()),
            opt if opt.starts_with("--") => return Err(format!("unknown option {opt}")),
            _ => words.push(arg),
        }
    }
    let mut words = words.into_iter();
    let verb = words.next().ok_or("no command given")?;
    let mut queue = || words.next().ok_or_else(|| format!("`{verb}` needs a queue name"));
    let command = match verb.as_str() {
        "create" => Command::Create(queue()?),
        "delete" => Command::Delete(queue()?),
        "start" => Command::Start(queue()?),
        "stop" => Command::Stop(queue()?),
        "list" => Command::List,
        "add" => {
            let queue = queue()?;
            let kind = words.next().ok_or("`add` needs a queue name and a kind of work")?;
            let payload = words.next().unwrap_or_default();
            Command::Add { queue, item: WorkItem::new(kind, payload) }
        }
        "take" => Command::Take { queue: queue()?, wait_ms: wait_ms.take().unwrap_or(0) },
        "watch" => Command::Watch(queue()?),
        "log" => {
            let line = words.by_ref().collect::<Vec<_>>().join(" ");
            if line.is_empty() {
                return Err("`log` needs the text to log".into());
            }
            Command::Log(line)
        }
        other => return Err(format!("unknown command `{other}`")),
    };
    if let Some(extra) = words.next() {
        return Err(format!("unexpected argument {extra:?}"));
    }
    if wait_ms.is_some() {
        return Err("--wait-ms only applies to `take`".into());
    }
    Ok(Some(Args { pipe, timeout: Duration::from_millis(timeout_ms), command }))
}

/// Makes the call and returns what to print.
fn run(client: &WorkQueuesBlockingClient, timeout: Duration, command: Command) -> Result<String, QueueError> {
    Ok(match command {
        Command::Create(name) => format!("created {}", client.create(name)?),
        Command::Delete(name) => {
            client.delete(name.clone())?;
            format!("deleted {name}")
        }
        Command::Start(name) => format!("started {}", client.start(name)?),
        Command::Stop(name) => format!("stopped {}", client.stop(name)?),
        Command::List => table(&client.list()?),
        Command::Add { queue, item } => {
            let id = client.add_work(queue.clone(), item)?;
            format!("added item {id} to {queue}")
        }
        Command::Take { queue, wait_ms } => {
            // The call's deadline must cover the wait on the server, plus the usual margin.
            let client = client.with_timeout(timeout + Duration::from_millis(wait_ms));
            match client.take_work(queue.clone(), wait_ms)? {
                Some((id, item)) => format!("item {id}: {item}"),
                None => format!("no work in {queue} (waited {wait_ms} ms)"),
            }
        }
        Command::Watch(queue) => return watch(client, queue),
        Command::Log(line) => {
            // The one-way call returns once the line is queued for the pipe; dropping the
            // client (as this process exits) waits until it is written.
            client.log(line)?;
            "logged (one-way: the server does not answer)".to_owned()
        }
    })
}

/// Prints the queue's events as they arrive; returns how the watch ended.
fn watch(client: &WorkQueuesBlockingClient, queue: String) -> Result<String, QueueError> {
    for event in client.watch(queue.clone())? {
        match event {
            Ok(event) => println!("{queue}: {event}"),
            Err(RpcError::Server(e)) if e.kind == ServerErrorKind::ShuttingDown => {
                return Ok("watch ended: the server is shutting down".to_owned());
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok("watch ended by the server".to_owned())
}

/// Formats queues as an aligned table.
fn table(queues: &[QueueInfo]) -> String {
    if queues.is_empty() {
        return "no queues".into();
    }
    let width = queues.iter().map(|q| q.name.len()).max().unwrap_or(0).max("NAME".len());
    let mut out = format!("{:<width$}  {:<7}  {:>7}  {:>7}", "NAME", "STATE", "PENDING", "TAKEN");
    for q in queues {
        out += &format!("\n{:<width$}  {:<7}  {:>7}  {:>7}", q.name, q.state.to_string(), q.pending, q.taken);
    }
    out
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("wq: {e}\n\n{USAGE}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // One timeout for both: a user waiting on `wq` does not care which part is slow.
    let config = ClientConfig::default().connect_timeout(args.timeout).default_timeout(args.timeout);
    let result = match WorkQueuesBlockingClient::connect_with(args.pipe.as_str(), config) {
        Ok(client) => run(&client, args.timeout, args.command),
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(QueueError::Rpc(e)) => {
            eprintln!("wq: {e}");
            if let RpcError::Transport(TransportError::NotRunning { .. }) = e {
                eprintln!("wq: start one with `work-queue-server --pipe {}`", args.pipe);
            }
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("wq: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Result<Option<Args>, String> {
        parse(line.split_whitespace().map(String::from))
    }

    #[test]
    fn options_go_anywhere() {
        let a = args("--pipe p take jobs --wait-ms 1000 --timeout-ms 20").unwrap().unwrap();
        assert_eq!((a.pipe.as_str(), a.timeout), ("p", Duration::from_millis(20)));
        assert!(matches!(a.command, Command::Take { ref queue, wait_ms: 1000 } if queue == "jobs"));
    }

    #[test]
    fn add_takes_an_optional_payload() {
        let a = args("add jobs resize photo-1.jpg").unwrap().unwrap();
        assert!(matches!(a.command, Command::Add { ref item, .. } if item.payload == b"photo-1.jpg"));
        let a = args("add jobs ping").unwrap().unwrap();
        assert!(matches!(a.command, Command::Add { ref item, .. } if item.payload.is_empty()));
        let a = args("add jobs echo -- --not-an-option").unwrap().unwrap();
        assert!(matches!(a.command, Command::Add { ref item, .. } if item.payload == b"--not-an-option"));
    }

    #[test]
    fn log_joins_its_words() {
        let a = args("log deploy  started -- --now").unwrap().unwrap();
        assert!(matches!(a.command, Command::Log(ref line) if line == "deploy started --now"));
        let a = args("watch jobs").unwrap().unwrap();
        assert!(matches!(a.command, Command::Watch(ref queue) if queue == "jobs"));
    }

    #[test]
    fn mistakes_are_explained() {
        for (line, why) in [
            ("", "no command"),
            ("frobnicate", "unknown command"),
            ("create", "needs a queue"),
            ("add jobs", "kind of work"),
            ("list extra", "unexpected argument"),
            ("list --wait-ms 5", "only applies to `take`"),
            ("watch", "needs a queue"),
            ("log", "needs the text"),
            ("--timeout-ms soon list", "not a number"),
            ("--pipe", "needs a value"),
            ("--verbose list", "unknown option"),
        ] {
            let err = args(line).unwrap_err();
            assert!(err.contains(why), "{line:?}: {err}");
        }
        assert!(args("list --help").unwrap().is_none());
    }
}
