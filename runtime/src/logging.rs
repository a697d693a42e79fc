//! `--log FILE --log-format text|json`: where runc writes its errors, which
//! containerd and podman read back when a command fails.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::time::SystemTime;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, Default)]
pub struct Logger {
    pub file: Option<PathBuf>,
    pub format: LogFormat,
}

impl Logger {
    /// Appends an error line to the log file, if one is configured. Logging
    /// must never turn a result into a different failure, so write errors are
    /// ignored.
    pub fn error(&self, message: &str) {
        let Some(path) = &self.file else { return };
        let Ok(mut file) = OpenOptions::new().create(true).append(true).open(path) else {
            return;
        };
        let time = humantime::format_rfc3339_nanos(SystemTime::now());
        let line = match self.format {
            LogFormat::Json => {
                serde_json::json!({"level": "error", "msg": message, "time": time.to_string()})
                    .to_string()
            }
            LogFormat::Text => format!("time=\"{time}\" level=error msg={message:?}"),
        };
        let _ = writeln!(file, "{line}");
    }
}
