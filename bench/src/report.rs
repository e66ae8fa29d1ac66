//! The results table, the machine it ran on, and recording both in
//! BENCHMARKS.md (between `<!-- bench:<label>:begin -->` and
//! `<!-- bench:<label>:end -->`, so that the hand-written text around a
//! block survives every run).

use std::path::Path;
use std::process::Command;

use anyhow::Context;

/// Where a measurement stands against its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Status {
    Met,
    Missed,
    /// No target: a reference value.
    Info,
}

impl Status {
    pub fn of(met: bool) -> Self {
        if met { Self::Met } else { Self::Missed }
    }

    fn text(self) -> &'static str {
        match self {
            Self::Met => "met",
            Self::Missed => "**missed**",
            Self::Info => "",
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    /// The issue's item (1–5).
    pub item: u8,
    pub measure: String,
    pub result: String,
    /// What the result is compared with.
    pub against: String,
    pub ratio: String,
    pub target: String,
    pub status: Status,
}

impl Row {
    pub fn info(item: u8, measure: impl Into<String>, result: impl Into<String>) -> Self {
        Self {
            item,
            measure: measure.into(),
            result: result.into(),
            against: String::new(),
            ratio: String::new(),
            target: String::new(),
            status: Status::Info,
        }
    }
}

/// The table as Markdown.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| # | measure | result | against | ratio | target | status |\n\
         |---|---|---:|---|---:|---|---|\n",
    );
    for row in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            row.item,
            row.measure,
            row.result,
            row.against,
            row.ratio,
            row.target,
            row.status.text()
        ));
    }
    out
}

/// The output of a shell command, trimmed (empty when it fails).
fn shell(command: &str) -> String {
    Command::new("sh")
        .arg("-c")
        .arg(command)
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
        .unwrap_or_default()
}

/// The 1, 5 and 15 minute load averages.
fn load_average() -> String {
    shell("cut -d' ' -f1-3 /proc/loadavg")
}

/// When and where: date, commit, `nproc`, `lscpu | head`, `free -h`, the
/// load average before and after.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    pub date: String,
    pub commit: String,
    pub nproc: String,
    pub lscpu: String,
    pub free: String,
    /// `/proc/loadavg` when the run started and when it ended: other work
    /// on the machine shares its cores with the measurements.
    pub load_before: String,
    pub load_after: String,
}

impl Machine {
    pub fn describe() -> Self {
        let commit = shell("git rev-parse --short HEAD 2>/dev/null");
        let dirty = !shell("git status --porcelain 2>/dev/null").is_empty();
        Self {
            date: shell("date -u '+%Y-%m-%d %H:%M UTC'"),
            commit: if dirty && !commit.is_empty() {
                format!("{commit} + uncommitted changes")
            } else {
                commit
            },
            nproc: shell("nproc"),
            lscpu: shell("lscpu | head"),
            free: shell("free -h"),
            load_before: load_average(),
            load_after: String::new(),
        }
    }

    /// Notes the load average at the end of the run.
    pub fn finish(&mut self) {
        self.load_after = load_average();
    }

    fn markdown(&self) -> String {
        format!(
            "Run {date} on {nproc} cores (commit {commit}); load average {before} before, \
             {after} after.\n\n\
             ```\n$ nproc\n{nproc}\n$ lscpu | head\n{lscpu}\n$ free -h\n{free}\n```\n",
            date = self.date,
            nproc = self.nproc,
            commit = self.commit,
            lscpu = self.lscpu,
            free = self.free,
            before = self.load_before,
            after = self.load_after,
        )
    }
}

/// A whole recorded block: when, where, the table and the notes.
pub fn block(machine: &Machine, rows: &[Row], notes: &[String]) -> String {
    let mut out = machine.markdown();
    out.push('\n');
    out.push_str(&table(rows));
    if !notes.is_empty() {
        out.push('\n');
        for note in notes {
            out.push_str(&format!("- {note}\n"));
        }
    }
    out
}

/// Replaces the `label` block of `path` with `content`, or appends the
/// block when the file has none (and creates the file when missing).
pub fn record(path: &Path, label: &str, content: &str) -> anyhow::Result<()> {
    let begin = format!("<!-- bench:{label}:begin -->");
    let end = format!("<!-- bench:{label}:end -->");
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            "# Benchmarks\n\n`make bench` writes the block below.\n".to_owned()
        }
        Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
    };
    let fresh = format!("{begin}\n{content}{end}");
    let updated = match (text.find(&begin), text.find(&end)) {
        (Some(from), Some(to)) if to > from => {
            format!("{}{fresh}{}", &text[..from], &text[to + end.len()..])
        }
        _ => format!("{}\n{fresh}\n", text.trim_end()),
    };
    std::fs::write(path, updated).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_is_replaced_and_the_text_around_it_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("BENCHMARKS.md");
        record(&path, "latest", "one\n").unwrap();
        let first = std::fs::read_to_string(&path).unwrap();
        assert!(first.contains("<!-- bench:latest:begin -->\none\n<!-- bench:latest:end -->"));
        std::fs::write(&path, format!("{first}\n## notes\nkept\n")).unwrap();
        record(&path, "latest", "two\n").unwrap();
        record(&path, "before", "zero\n").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("<!-- bench:latest:begin -->\ntwo\n<!-- bench:latest:end -->"));
        assert!(!text.contains("one"));
        assert!(text.contains("## notes\nkept\n"));
        assert!(text.contains("<!-- bench:before:begin -->\nzero\n<!-- bench:before:end -->"));
    }

    #[test]
    fn the_table_has_one_line_per_row() {
        let rows = [Row::info(1, "a", "1"), Row::info(2, "b", "2")];
        assert_eq!(table(&rows).lines().count(), 4);
    }
}
