//! The man page and the shell completion scripts, generated from the clap definitions in
//! [`super::args`] with `clap_mangen` and `clap_complete`.
//!
//! `webprom-edge man` and `webprom-edge completions SHELL` print them for an installer or a
//! package. What the clap definitions cannot say (files, signals, exit status, environment) is
//! written here, in one place. This module only writes to the writer it is given: it never
//! reads the configuration, a file or the environment.

use std::io::{self, Write};

use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, italic, roman};

use super::args::{Args, DEFAULT_CONFIG};

/// The name the binary is installed as, and the name of its man page and completions.
pub const BIN_NAME: &str = "webprom-edge";

/// Writes the completion script for `shell` (bash, zsh, fish, elvish, PowerShell) for the
/// command [`BIN_NAME`].
///
/// # Errors
/// Only the writer's.
pub fn completions(shell: Shell, out: &mut dyn Write) -> io::Result<()> {
    let mut cmd = Args::command();
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, BIN_NAME, &mut buf);
    match shell {
        Shell::Bash => buf = bash_hyphen_fix(&String::from_utf8_lossy(&buf)).into_bytes(),
        Shell::Fish => buf.extend(fish_positional_values(&cmd).as_bytes()),
        _ => {}
    }
    out.write_all(&buf)?;
    out.flush()
}

/// clap_complete's bash script (4.6.12) escapes a hyphen in the binary's name as `__` where it
/// sets the state (`webprom__edge__subcmd__run`) but as `__subcmd__` in the `case` arms that
/// read it (`webprom__subcmd__edge__subcmd__run`), so no arm matches and nothing after a
/// subcommand completes (clap-rs/clap#6421, open). The arms are respelled as the state is.
fn bash_hyphen_fix(script: &str) -> String {
    let wrong = format!("{}__subcmd__", BIN_NAME.replace('-', "__subcmd__"));
    let right = format!("{}__subcmd__", BIN_NAME.replace('-', "__"));
    script.replace(&wrong, &right)
}

/// Writes the man page `webprom-edge(1)` in roff (`man -l` reads it): NAME, SYNOPSIS with one
/// line per command, DESCRIPTION, OPTIONS, COMMANDS with a subsection for each command and its
/// options, FILES, ENVIRONMENT, SIGNALS, EXIT STATUS, SEE ALSO and VERSION.
///
/// # Errors
/// Only the writer's.
pub fn man_page(out: &mut dyn Write) -> io::Result<()> {
    // No `help` subcommand in the page: `--help` is listed with each command's options.
    let mut cmd = Args::command().disable_help_subcommand(true);
    cmd.build();
    let page = Man::new(cmd.clone()).title(BIN_NAME.to_uppercase());
    let subcommands: Vec<clap::Command> = cmd.get_subcommands().cloned().collect();

    let mut roff = Vec::new();
    // The title comes first, with roff's preamble; every later part is rendered without it.
    page.render_title(&mut roff)?;
    // No hyphenation and no justification: paths, keys and commands are copied from the page
    // as they stand.
    roff.extend(b".nh\n.ad l\n");
    roff.extend(part(|w| page.render_name_section(w), Heading::Keep)?);

    roff.extend(b".SH SYNOPSIS\n");
    roff.extend(part(|w| page.render_synopsis_section(w), Heading::Drop)?);
    for sub in &subcommands {
        roff.extend(b".br\n");
        roff.extend(part(
            |w| Man::new(sub.clone()).render_synopsis_section(w),
            Heading::Drop,
        )?);
    }

    roff.extend(part(|w| page.render_description_section(w), Heading::Keep)?);
    roff.extend(part(|w| page.render_options_section(w), Heading::Keep)?);

    roff.extend(b".SH COMMANDS\n");
    for sub in &subcommands {
        let man = Man::new(sub.clone());
        let name = sub.get_bin_name().unwrap_or_else(|| sub.get_name());
        roff.extend(Roff::new().control("SS", [name]).to_roff().as_bytes());
        roff.extend(part(|w| man.render_synopsis_section(w), Heading::Drop)?);
        roff.extend(b".PP\n");
        roff.extend(part(|w| man.render_description_section(w), Heading::Drop)?);
        roff.extend(part(|w| man.render_options_section(w), Heading::Drop)?);
    }

    roff.extend(sections().to_roff().as_bytes());
    roff.extend(part(|w| page.render_version_section(w), Heading::Keep)?);
    out.write_all(&roff)?;
    out.flush()
}

/// Whether a part keeps the `.SH` heading `clap_mangen` gives it or sits under one of ours.
enum Heading {
    Keep,
    Drop,
}

/// One section rendered by `clap_mangen`, without the string definition that `roff` puts at
/// the start of every rendering (the title's copy is enough) and, for [`Heading::Drop`],
/// without its `.SH` line.
fn part(
    render: impl FnOnce(&mut Vec<u8>) -> io::Result<()>,
    heading: Heading,
) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    render(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let mut kept = String::with_capacity(text.len());
    let mut at_start = true;
    for line in text.lines() {
        if at_start && (line.starts_with(".ie \\n(.g .ds Aq") || line.starts_with(".el .ds Aq")) {
            continue;
        }
        if at_start && matches!(heading, Heading::Drop) && line.starts_with(".SH ") {
            at_start = false;
            continue;
        }
        at_start = false;
        kept.push_str(line);
        kept.push('\n');
    }
    Ok(kept.into_bytes())
}

/// clap_complete's fish script completes options only, never a positional argument
/// (documented in clap_complete 4.6.12): one `complete` line per positional argument with
/// possible values (`completions SHELL`) offers them, after the subcommand is typed.
fn fish_positional_values(cmd: &clap::Command) -> String {
    let mut lines = String::new();
    for sub in cmd.get_subcommands() {
        for arg in sub.get_positionals() {
            let values: Vec<String> = arg
                .get_possible_values()
                .iter()
                .filter(|v| !v.is_hide_set())
                .map(|v| v.get_name().to_owned())
                .collect();
            if !values.is_empty() {
                lines.push_str(&format!(
                    "complete -c {BIN_NAME} -n \"__fish_seen_subcommand_from {}\" -f -a \"{}\"\n",
                    sub.get_name(),
                    values.join(" ")
                ));
            }
        }
    }
    lines
}

/// The sections the clap definitions cannot give.
fn sections() -> Roff {
    let mut r = Roff::new();

    r.control("SH", ["FILES"]);
    r.control("TP", []);
    r.text([bold(DEFAULT_CONFIG)]);
    r.text([roman(
        "The configuration file (TOML) read when --config is absent. Relative paths in it are \
         relative to the directory the proxy is started in.",
    )]);
    r.control("PP", []);
    r.text([roman(
        "The configuration file sets every other path: the state directory of the daily \
         pseudonym keys (privacy.key_dir), the log directory of the access log's day files and \
         the audit trail (access_log.dir), and the TLS certificate and key (tls.cert, tls.key), \
         where run writes a development certificate if they are missing and tls.self_signed is \
         true.",
    )]);
    r.control("PP", []);
    r.text([roman(
        "Two fleet secrets, each at least 32 bytes, mode 0600 (group and others: nothing), and \
         never the same file: rate_limit.global.key_secret_file, from which the keys of the \
         global rate limit's Redis entries are derived (read only), and tls.tickets.secret_file, \
         the TLS session-ticket key, which run rewrites at each rotation with the current \
         period's key (so it must be writable by the proxy's user; the packaged service keeps \
         it in its state directory). Investigations (investigate, erase) append to the audit trail audit.jsonl in \
         the access_log.dir of the configuration they run with, whatever --logs names.",
    )]);

    r.control("SH", ["ENVIRONMENT"]);
    r.control("TP", []);
    r.text([bold("WEBPROM_EDGE_LOG")]);
    r.text([
        roman("The filter of the diagnostics written to stderr, in the syntax of tracing's "),
        italic("EnvFilter"),
        roman(": a level such as "),
        bold("debug"),
        roman(", or directives such as "),
        bold("webprom_edge=debug,info"),
        roman(
            ". Unset or empty: info. A value that is not a valid filter, or not UTF-8, is not \
             ignored: info is used and a warning names the variable. Diagnostics never contain \
             a request value, and dependencies' TRACE events never pass.",
        ),
    ]);

    r.control("SH", ["SIGNALS"]);
    r.text([roman("Handled by run:")]);
    r.control("TP", []);
    r.text([bold("SIGHUP")]);
    r.text([roman(
        "Read the configuration file again and apply what can change without a restart: \
         server.hosts, tls.* (new connections get the new certificates, open ones keep theirs), \
         geoip.* and rate_limit.*. A part that fails to reload keeps its old state and logs \
         why; each changed key that needs a restart is named in a warning.",
    )]);
    r.control("TP", []);
    r.text([bold("SIGTERM"), roman(", "), bold("SIGINT")]);
    r.text([roman(
        "Drain gracefully: stop accepting, answer /readyz with 503 \"not ready: draining\", let \
         in-flight requests finish for up to server.shutdown_grace, and exit 0.",
    )]);

    r.control("SH", ["EXIT STATUS"]);
    r.control("TP", []);
    r.text([bold("0")]);
    r.text([roman("Success.")]);
    r.control("TP", []);
    r.text([bold("1")]);
    r.text([roman(
        "A failure at run time, such as a day file that cannot be read or an audit line that \
         cannot be written.",
    )]);
    r.control("TP", []);
    r.text([bold("2")]);
    r.text([roman(
        "Bad usage or bad configuration: the message names the flag, the configuration key or \
         the file, and the reason.",
    )]);

    r.control("SH", ["SEE ALSO"]);
    r.text([
        bold("kill"),
        roman("(1), "),
        bold("signal"),
        roman(
            "(7). The README of the source distribution documents every configuration key and \
             metric; docs/policy.md holds the privacy policy the proxy enforces, and \
             docs/access-record.schema.json the schema of an access-log record.",
        ),
    ]);
    r
}
