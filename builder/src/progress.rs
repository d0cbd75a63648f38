//! Progress reporting: bars on a terminal (indicatif), plain log lines otherwise.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Where progress goes.
#[derive(Debug, Clone)]
pub struct Progress {
    multi: Option<MultiProgress>,
}

/// One unit of work being reported.
#[derive(Debug)]
pub struct Task {
    bar: Option<ProgressBar>,
    what: String,
    started: std::time::Instant,
}

impl Progress {
    /// Bars when stderr is a terminal and `enabled`, log lines otherwise.
    pub fn new(enabled: bool) -> Self {
        let tty = enabled && std::io::stderr().is_terminal();
        Progress {
            multi: tty.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
        }
    }

    /// No bars (library use, tests).
    pub fn plain() -> Self {
        Progress { multi: None }
    }

    /// Starts a task; `len` in bytes when known.
    pub fn task(&self, what: impl Into<String>, len: Option<u64>) -> Task {
        let what = what.into();
        let bar = self.multi.as_ref().map(|m| {
            let b = match len {
                Some(n) => {
                    let b = ProgressBar::new(n);
                    b.set_style(
                        ProgressStyle::with_template(
                            "{spinner} {msg:40} {bytes:>10}/{total_bytes:10} {bar:30}",
                        )
                        .expect("static template"),
                    );
                    b
                }
                None => {
                    let b = ProgressBar::new_spinner();
                    b.set_style(
                        ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                            .expect("static template"),
                    );
                    b
                }
            };
            b.enable_steady_tick(Duration::from_millis(120));
            b.set_message(what.clone());
            m.add(b)
        });
        if bar.is_none() {
            tracing::info!("{what}");
        }
        Task {
            bar,
            what,
            started: std::time::Instant::now(),
        }
    }
}

impl Task {
    /// Advances a byte-counting task.
    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    /// Finishes with a closing note.
    pub fn done(self, note: &str) {
        let secs = self.started.elapsed().as_secs_f64();
        match &self.bar {
            Some(b) => b.finish_with_message(format!("{} {note} ({secs:.2}s)", self.what)),
            None => tracing::info!("{} {note} ({secs:.2}s)", self.what),
        }
    }
}
