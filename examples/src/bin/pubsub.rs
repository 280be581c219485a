//! `pubsub`: tarpc's publish/subscribe example, redone with streams.
//!
//! ```text
//! pubsub --serve NAME                                    # the broker
//! pubsub --subscribe NAME TOPIC...                       # print the messages of these topics as they come
//! pubsub --publish NAME TOPIC MESSAGE [TOPIC MESSAGE]... # publish; says how many subscribers got each
//! pubsub --demo                                          # all of it, as real processes
//! ```
//!
//! With cargo: `cargo run -p pipe-rpc-examples --bin pubsub -- --demo`.
//!
//! A subscriber subscribes to each of its topics with one call, `subscribe(topic)`, whose
//! reply is a stream of that topic's messages; the calls share the subscriber's one
//! connection, and it reads their streams merged. A publisher calls `publish(topic,
//! message)`, which gives the message to every current subscriber of the topic and returns
//! how many there were. A subscriber that goes away is forgotten as soon as the broker
//! notices its stream is gone; a slow one holds back publishes to its topics once its
//! buffer is full, so no message is dropped (see [`Fanout`]). When the broker is asked to
//! stop (Ctrl-C or a `shutdown` line on stdin), it ends every subscription normally after
//! the messages already published, then shuts down; subscribers then exit.
//!
//! `--demo` replays tarpc's scenario with every party a process of its own (this binary
//! re-running itself): a broker, subscriber 1 on `calculus` and `cool shorts`, subscriber 2
//! on `cool shorts` and `history`, and a publisher that publishes to all three; subscriber
//! 1 then leaves, the publisher publishes once more to `cool shorts` (only subscriber 2 is
//! left to get it), and the broker shuts down. It prints what each subscriber received.
//!
//! # Compared with tarpc's version
//!
//! tarpc's `examples/pubsub.rs` has no way to push from server to client, so it turns
//! the roles around by hand: each subscriber opens a connection to the broker and then
//! *serves* a `Subscriber` service on it, with the broker as that connection's client. The
//! broker asks each new connection for its topics, calls `receive` on every subscriber of a
//! topic for every message, and runs a garbage-collection task per subscriber that waits
//! for the reverse connection to break before forgetting it. Here a subscription is one
//! call whose reply is a stream: no reverse connection, no second service, no bookkeeping
//! of connections. The broker learns that a subscriber left when its stream's sender
//! fails (a `Fanout` notices at once), flow control keeps a slow subscriber from piling up
//! messages in the broker, and the broker can end every subscription cleanly.
//!
//! [`Fanout`]: pipe_rpc_examples::fanout::Fanout

use std::collections::HashMap;
use std::error::Error;
use std::process::{ExitCode, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use pipe_rpc_examples::fanout::Fanout;
use pipe_rpc_examples::server::{OnStdinEof, stop_requested};
use rpc_core::{ClientConfig, RpcError, RpcStream, Server, ServerErrorKind};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

const USAGE: &str = "\
usage: pubsub --serve NAME [--stop-on-eof]
       pubsub --subscribe NAME TOPIC... [--stop-on-eof]
       pubsub --publish NAME TOPIC MESSAGE [TOPIC MESSAGE]...
       pubsub --demo

--serve       runs the broker on pipe NAME until Ctrl-C or a `shutdown` line on
              stdin (with --stop-on-eof, also when stdin ends)
--subscribe   prints each message of the TOPICs as it comes, until the broker
              ends the subscriptions, Ctrl-C, or (with --stop-on-eof) stdin ends
--publish     publishes each MESSAGE to its TOPIC
--demo        runs a broker, two subscribers and a publisher as processes";

/// Messages each subscription's channel holds; beyond them, its stream's window.
const SUBSCRIBER_BUFFER: usize = 64;

/// How long a stopping broker waits for its subscribers to get the last messages.
const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// How long the demo waits for any one thing a process should do.
const DEMO_TIMEOUT: Duration = Duration::from_secs(30);

/// A published message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Message {
    topic: String,
    text: String,
}

/// What a subscription's stream carries.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Feed {
    /// The first item: the subscription is in place; messages published from now on come.
    Subscribed {
        topic: String,
        /// Subscribers of the topic now, this one included.
        subscribers: usize,
    },
    /// A message published to the topic.
    Message(Message),
}

/// The broker's service.
#[rpc_core::service]
trait PubSub {
    /// Subscribes to `topic`: [`Feed::Subscribed`], then each message published to it from
    /// then on, until the broker stops (the stream then ends normally).
    async fn subscribe(&self, topic: String) -> RpcStream<Feed>;
    /// Publishes `text` to `topic`; returns how many subscribers it was given to.
    async fn publish(&self, topic: String, text: String) -> u64;
}

// ---------------------------------------------------------------------------------------
// The broker

struct Broker {
    /// Subscribers by topic; `None` once the broker is closing.
    topics: Mutex<Option<HashMap<String, Fanout<Feed>>>>,
}

impl Broker {
    fn new() -> Self {
        Broker { topics: Mutex::new(Some(HashMap::new())) }
    }

    /// Ends every subscription after the messages already published; returns how many
    /// were still being delivered after the grace period.
    async fn close(&self) -> usize {
        let topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner).take().unwrap_or_default();
        let closing = topics.values().map(|feed| feed.close(DRAIN_GRACE));
        futures::future::join_all(closing).await.into_iter().sum()
    }
}

impl PubSub for Broker {
    async fn subscribe(&self, topic: String) -> RpcStream<Feed> {
        let feed = {
            let mut topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(topics) = topics.as_mut() else { return RpcStream::iter([]) };
            topics.entry(topic.clone()).or_insert_with(|| Fanout::new(SUBSCRIBER_BUFFER)).clone()
        };
        let first = {
            let topic = topic.clone();
            move |_id, subscribers| {
                println!("a subscriber joined `{topic}` ({subscribers} now)");
                Feed::Subscribed { topic, subscribers }
            }
        };
        let on_leave = Box::new(move |_id, left| println!("a subscriber left `{topic}` ({left} now)"));
        // `None`: the broker closed between the lookup and now.
        feed.subscribe(first, on_leave).unwrap_or_else(|| RpcStream::iter([]))
    }

    async fn publish(&self, topic: String, text: String) -> u64 {
        let feed =
            self.topics.lock().unwrap_or_else(PoisonError::into_inner).as_ref().and_then(|t| t.get(&topic).cloned());
        let reached = match feed {
            Some(feed) => feed.send(Feed::Message(Message { topic: topic.clone(), text: text.clone() })).await,
            None => 0,
        };
        println!("published to `{topic}`: {text} ({reached} subscriber(s))");
        reached as u64
    }
}

async fn serve(name: &str, on_eof: OnStdinEof) -> Result<(), Box<dyn Error>> {
    let broker = std::sync::Arc::new(Broker::new());
    let server = Server::new(PubSubServer::from_arc(broker.clone())).bind(name)?;
    println!("listening on {}", server.name());
    let shutdown = server.shutdown_handle();
    tokio::spawn(async move {
        let why = stop_requested(on_eof).await;
        println!("{why}: ending every subscription");
        match broker.close().await {
            0 => println!("every subscriber has every message: shutting down"),
            n => println!("{n} subscription(s) still delivering after {DRAIN_GRACE:?}: shutting down anyway"),
        }
        shutdown.shutdown();
    });
    server.run().await?;
    println!("stopped");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Subscriber and publisher

fn client_config() -> ClientConfig {
    ClientConfig::default().connect_timeout(Duration::from_secs(20))
}

/// Prints the messages of `topics` until the broker ends the subscriptions or the user
/// asks to stop. Messages go to stdout, everything else to stderr.
async fn subscribe(name: &str, topics: &[&str], on_eof: OnStdinEof) -> Result<(), Box<dyn Error>> {
    let client = PubSubClient::connect_with(name, client_config()).await?;
    let mut subscriptions = Vec::new();
    for topic in topics {
        // One call per topic, all on this one connection; each reply is a stream.
        subscriptions.push(client.subscribe((*topic).to_owned()).await?);
    }
    let mut feed = futures::stream::select_all(subscriptions);
    let mut stop = std::pin::pin!(stop_requested(on_eof));
    let (mut subscribed, mut received) = (0, 0u64);
    loop {
        let item = tokio::select! {
            item = feed.next() => item,
            why = &mut stop => {
                eprintln!("{why}: leaving; {received} message(s) received");
                return Ok(());
            }
        };
        match item {
            Some(Ok(Feed::Subscribed { topic, subscribers })) => {
                subscribed += 1;
                eprintln!("subscribed to `{topic}` ({subscribers} subscriber(s))");
                if subscribed == topics.len() {
                    eprintln!("subscribed to all {subscribed} topic(s)");
                }
            }
            Some(Ok(Feed::Message(Message { topic, text }))) => {
                received += 1;
                println!("{topic}: {text}");
            }
            None => {
                eprintln!("the broker ended the subscriptions; {received} message(s) received");
                return Ok(());
            }
            Some(Err(RpcError::Server(e))) if e.kind == ServerErrorKind::ShuttingDown => {
                eprintln!("the broker is shutting down; {received} message(s) received");
                return Ok(());
            }
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

async fn publish(name: &str, pairs: &[&str]) -> Result<(), Box<dyn Error>> {
    let client = PubSubClient::connect_with(name, client_config()).await?;
    for pair in pairs.chunks_exact(2) {
        let reached = client.publish(pair[0].to_owned(), pair[1].to_owned()).await?;
        println!("published to `{}`: {} ({reached} subscriber(s))", pair[0], pair[1]);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The demo

/// One line a demo process printed.
enum Out {
    Stdout(String),
    Stderr(String),
}

/// A process of the demo. Its output is printed as it comes, marked with its label, and
/// kept for the demo to wait on.
struct Party {
    label: String,
    child: Child,
    /// Held here, not in `child`: tokio's `Child::wait` would close it.
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<Out>,
    stdout: Vec<String>,
}

impl Party {
    fn start(label: &str, args: &[&str]) -> Result<Party, Box<dyn Error>> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let (tx, lines) = mpsc::unbounded_channel();
        forward(label, child.stdout.take().expect("piped"), tx.clone(), Out::Stdout);
        forward(label, child.stderr.take().expect("piped"), tx, Out::Stderr);
        let stdin = child.stdin.take();
        Ok(Party { label: label.to_owned(), child, stdin, lines, stdout: Vec::new() })
    }

    /// Waits until the process prints a line (on either stream) for which `done` holds.
    async fn wait_for(&mut self, what: &str, mut done: impl FnMut(&str) -> bool) -> Result<(), Box<dyn Error>> {
        let wait = async {
            while let Some(out) = self.lines.recv().await {
                let line = match out {
                    Out::Stdout(line) => {
                        self.stdout.push(line);
                        self.stdout.last().expect("just pushed")
                    }
                    Out::Stderr(ref line) => line,
                };
                if done(line) {
                    return true;
                }
            }
            false
        };
        match tokio::time::timeout(DEMO_TIMEOUT, wait).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!("{} ended before {what}", self.label).into()),
            Err(_) => Err(format!("{} did not {what} within {DEMO_TIMEOUT:?}", self.label).into()),
        }
    }

    /// Closes the process's stdin (with `--stop-on-eof`, that asks it to stop), waits for
    /// it to exit, and collects the rest of its output.
    async fn finish(&mut self) -> Result<(), Box<dyn Error>> {
        drop(self.stdin.take());
        self.wait_exit().await
    }

    /// Waits for the process to exit on its own (its stdin stays open) and collects the
    /// rest of its output.
    async fn wait_exit(&mut self) -> Result<(), Box<dyn Error>> {
        let status = match tokio::time::timeout(DEMO_TIMEOUT, self.child.wait()).await {
            Ok(status) => status?,
            Err(_) => return Err(format!("{} did not exit within {DEMO_TIMEOUT:?}", self.label).into()),
        };
        while let Some(out) = self.lines.recv().await {
            if let Out::Stdout(line) = out {
                self.stdout.push(line);
            }
        }
        if status.success() { Ok(()) } else { Err(format!("{} exited with {status}", self.label).into()) }
    }
}

/// Prints each line of `from` marked with `label`, and passes it on.
fn forward(
    label: &str,
    from: impl AsyncRead + Unpin + Send + 'static,
    to: mpsc::UnboundedSender<Out>,
    wrap: fn(String) -> Out,
) {
    let label = label.to_owned();
    tokio::spawn(async move {
        let mut lines = BufReader::new(from).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            println!("  [{label}] {line}");
            let _ = to.send(wrap(line));
        }
    });
}

async fn demo() -> Result<(), Box<dyn Error>> {
    let pipe = format!("pubsub-demo-{}", std::process::id());
    let p = pipe.as_str();
    println!("Every party is a process of its own; lines marked [..] are theirs.\n");

    println!("demo: starting the broker");
    let mut broker = Party::start("broker", &["--serve", p, "--stop-on-eof"])?;
    broker.wait_for("listen", |l| l.starts_with("listening on")).await?;

    println!("demo: starting subscriber 1 (calculus, cool shorts) and subscriber 2 (cool shorts, history)");
    let mut sub1 = Party::start("subscriber 1", &["--subscribe", p, "calculus", "cool shorts", "--stop-on-eof"])?;
    let mut sub2 = Party::start("subscriber 2", &["--subscribe", p, "cool shorts", "history", "--stop-on-eof"])?;
    for sub in [&mut sub1, &mut sub2] {
        sub.wait_for("subscribe", |l| l.starts_with("subscribed to all")).await?;
    }

    println!("demo: publishing to calculus, cool shorts and history");
    let mut publisher = Party::start(
        "publisher",
        &["--publish", p, "calculus", "sqrt(2)", "cool shorts", "hello to all", "history", "napoleon"],
    )?;
    publisher.wait_exit().await?;

    // Subscriber 1 leaves once it has its two messages.
    sub1.wait_for("receive `hello to all`", |l| l == "cool shorts: hello to all").await?;
    println!("demo: subscriber 1 leaves (its stdin closes)");
    sub1.finish().await?;
    // Its two subscriptions end on the broker as its connection closes.
    let mut left = 0;
    let both_left = |line: &str| {
        left += usize::from(line.starts_with("a subscriber left"));
        left == 2
    };
    broker.wait_for("notice that subscriber 1 left", both_left).await?;

    println!("demo: publishing to cool shorts again");
    let mut publisher = Party::start("publisher", &["--publish", p, "cool shorts", "hello to who?"])?;
    publisher.wait_exit().await?;

    println!("demo: stopping the broker; it ends the subscriptions after their last messages");
    if let Some(stdin) = broker.stdin.as_mut() {
        stdin.write_all(b"shutdown\n").await?;
        stdin.flush().await?;
    }
    sub2.wait_exit().await?;
    broker.wait_exit().await?;

    println!("\nWhat each subscriber received:");
    let expected: [&[&str]; 2] = [
        &["calculus: sqrt(2)", "cool shorts: hello to all"],
        &["cool shorts: hello to all", "history: napoleon", "cool shorts: hello to who?"],
    ];
    let mut as_expected = true;
    for ((sub, topics), expected) in
        [(&sub1, "calculus, cool shorts"), (&sub2, "cool shorts, history")].into_iter().zip(expected)
    {
        println!("{} ({topics}) received {} message(s):", sub.label, sub.stdout.len());
        for line in &sub.stdout {
            println!("    {line}");
        }
        as_expected &= sub.stdout == expected;
    }
    if !as_expected {
        return Err("the subscribers did not receive what was published to their topics".into());
    }
    println!("\ndemo complete: each subscriber got exactly the messages of its topics while it was subscribed");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let on_eof = match args.iter().position(|a| a == "--stop-on-eof") {
        Some(i) => {
            args.remove(i);
            OnStdinEof::Shutdown
        }
        None => OnStdinEof::KeepServing,
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["--serve", name] => serve(name, on_eof).await,
        ["--subscribe", name, topics @ ..] if !topics.is_empty() => subscribe(name, topics, on_eof).await,
        ["--publish", name, pairs @ ..] if !pairs.is_empty() && pairs.len() % 2 == 0 => publish(name, pairs).await,
        ["--demo"] => demo().await,
        ["-h" | "--help"] => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(64);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pubsub: {e}");
            ExitCode::FAILURE
        }
    }
}
