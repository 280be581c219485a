//! The command line.

use std::time::Duration;

/// What to do.
#[derive(Debug, PartialEq)]
pub(crate) enum Command {
    List,
    Probe { name: String },
    Methods { name: String },
    Call { name: String, method: String, args: Vec<String> },
}

/// Options that apply to every command.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Options {
    /// One JSON object per line instead of a table.
    pub(crate) json: bool,
    /// `--timeout`, if given.
    pub(crate) timeout: Option<Duration>,
    /// `list --live`: only the endpoints whose server answered.
    pub(crate) live: bool,
}

#[derive(Debug, PartialEq)]
pub(crate) enum Parsed {
    Help,
    Run(Command, Options),
}

/// Parses the arguments after the program name.
pub(crate) fn parse(args: Vec<String>) -> Result<Parsed, String> {
    let mut opts = Options::default();
    let mut words = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--" => {
                words.extend(args.by_ref());
                break;
            }
            "-h" | "--help" | "help" if words.is_empty() || arg != "help" => return Ok(Parsed::Help),
            "--json" => opts.json = true,
            "--live" => opts.live = true,
            "--timeout" => {
                let value = args.next().ok_or("--timeout needs a duration (500ms, 2s, 1.5)")?;
                opts.timeout = Some(duration(&value)?);
            }
            flag if flag.starts_with("--") => {
                let (name, value) = flag.split_once('=').unwrap_or((flag, ""));
                match name {
                    "--timeout" if !value.is_empty() => opts.timeout = Some(duration(value)?),
                    _ => return Err(format!("unknown option `{flag}`")),
                }
            }
            _ => words.push(arg),
        }
    }
    let mut words = words.into_iter();
    let Some(command) = words.next() else { return Err("no command given".into()) };
    let mut need = |what: &str| words.next().ok_or_else(|| format!("`{command}` needs {what}"));
    let parsed = match command.as_str() {
        "list" => Command::List,
        "probe" => Command::Probe { name: need("the endpoint's NAME")? },
        "methods" => Command::Methods { name: need("the endpoint's NAME")? },
        "call" => {
            let name = need("the endpoint's NAME and a METHOD")?;
            let method = need("a METHOD after the NAME")?;
            Command::Call { name, method, args: words.by_ref().collect() }
        }
        other => return Err(format!("unknown command `{other}` (list, probe, methods, call)")),
    };
    if let Some(extra) = words.next() {
        return Err(format!("unexpected argument `{extra}` after `{command}`"));
    }
    if opts.live && parsed != Command::List {
        return Err("--live is an option of `list`".into());
    }
    Ok(Parsed::Run(parsed, opts))
}

/// `500ms`, `2s`, `1.5` (seconds).
fn duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("`{text}` is not a duration (500ms, 2s, 1.5)");
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 1e-3)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1.0)
    } else {
        (text, 1.0)
    };
    let n: f64 = number.parse().map_err(|_| bad())?;
    Duration::try_from_secs_f64(n * scale).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_words(words: &[&str]) -> Result<Parsed, String> {
        parse(words.iter().map(|w| w.to_string()).collect())
    }

    #[test]
    fn commands_options_and_arguments() {
        assert_eq!(parse_words(&["list"]), Ok(Parsed::Run(Command::List, Options::default())));
        let Ok(Parsed::Run(cmd, opts)) =
            parse_words(&["--json", "call", "svc", "echo", "\"hi\"", "-5", "--timeout", "2s"])
        else {
            panic!()
        };
        assert_eq!(
            cmd,
            Command::Call { name: "svc".into(), method: "echo".into(), args: vec!["\"hi\"".into(), "-5".into()] }
        );
        assert_eq!(opts, Options { json: true, timeout: Some(Duration::from_secs(2)), live: false });
        let Ok(Parsed::Run(cmd, _)) = parse_words(&["call", "svc", "m", "--", "--json"]) else { panic!() };
        assert_eq!(cmd, Command::Call { name: "svc".into(), method: "m".into(), args: vec!["--json".into()] });
        assert_eq!(parse_words(&["--help"]), Ok(Parsed::Help));
        assert_eq!(parse_words(&["help"]), Ok(Parsed::Help));
        // `help` as an argument of a call is an argument.
        assert!(matches!(parse_words(&["call", "svc", "help"]), Ok(Parsed::Run(Command::Call { .. }, _))));
    }

    #[test]
    fn mistakes_are_named() {
        assert_eq!(parse_words(&[]), Err("no command given".into()));
        assert_eq!(parse_words(&["probe"]), Err("`probe` needs the endpoint's NAME".into()));
        assert_eq!(parse_words(&["call", "svc"]), Err("`call` needs a METHOD after the NAME".into()));
        assert_eq!(parse_words(&["frob"]), Err("unknown command `frob` (list, probe, methods, call)".into()));
        assert_eq!(parse_words(&["list", "--bogus"]), Err("unknown option `--bogus`".into()));
        assert_eq!(parse_words(&["probe", "a", "b"]), Err("unexpected argument `b` after `probe`".into()));
        assert!(parse_words(&["list", "--timeout", "soon"]).unwrap_err().contains("not a duration"));
        assert_eq!(parse_words(&["probe", "a", "--live"]), Err("--live is an option of `list`".into()));
    }

    #[test]
    fn durations() {
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(duration("-1").is_err());
        assert!(duration("").is_err());
    }
}
