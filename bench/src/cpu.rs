//! CPU time, read from Linux's `/proc`: the whole machine's (busy and stolen by the hypervisor)
//! and the orchestrator processes' own. On a shared virtual machine the wall-clock figures move
//! with what the neighbours do; CPU time per saga moves much less, and the stolen share says how
//! far to trust a run's latency. None where `/proc` cannot be read.

/// Clock ticks per second of `/proc`'s figures (`USER_HZ`, 100 on every Linux ABI in use).
const TICKS_PER_S: f64 = 100.0;

/// The machine's CPU time so far, in ticks, summed over its cores.
#[derive(Debug, Clone, Copy)]
pub struct Machine {
    busy: u64,
    steal: u64,
    total: u64,
}

/// CPU spent between two readings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spent {
    /// The machine's busy time (everything but idle, I/O wait and steal), in seconds.
    pub busy_s: f64,
    /// The share of the machine's time the hypervisor gave to others, in percent.
    pub steal_pct: f64,
}

impl Machine {
    pub fn now() -> Option<Machine> {
        parse_stat(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    pub fn since(&self, earlier: &Machine) -> Spent {
        let total = self.total.saturating_sub(earlier.total).max(1) as f64;
        Spent {
            busy_s: self.busy.saturating_sub(earlier.busy) as f64 / TICKS_PER_S,
            steal_pct: 100.0 * self.steal.saturating_sub(earlier.steal) as f64 / total,
        }
    }
}

/// The first line of `/proc/stat`: `cpu user nice system idle iowait irq softirq steal …`.
fn parse_stat(stat: &str) -> Option<Machine> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    let [user, nice, system, idle, iowait, irq, softirq, steal] = f[..] else {
        return None;
    };
    Some(Machine {
        busy: user + nice + system + irq + softirq,
        steal,
        total: user + nice + system + idle + iowait + irq + softirq + steal,
    })
}

/// A process's own CPU time (user + system) so far, in seconds.
pub fn process_s(pid: u32) -> Option<f64> {
    parse_process(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `/proc/<pid>/stat`: after the command's closing parenthesis, `utime` and `stime` are the
/// 12th and 13th fields.
fn parse_process(stat: &str) -> Option<f64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_S)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_time_splits_busy_from_idle_and_steal() {
        let before =
            parse_stat("cpu  100 0 50 1000 10 0 5 20 0 0\ncpu0 1 2 3").expect("a cpu line");
        let after = parse_stat("cpu  300 0 100 1100 10 0 5 120 0 0\n").expect("a cpu line");
        let spent = after.since(&before);
        assert_eq!(spent.busy_s, 2.5);
        // 250 busy + 100 idle + 100 stolen ticks: 100 of 450.
        assert!((spent.steal_pct - 100.0 * 100.0 / 450.0).abs() < 1e-9);
        assert!(parse_stat("cpu 1 2 3").is_none());
    }

    #[test]
    fn process_time_is_read_after_the_command_name() {
        // A command name with spaces and a parenthesis of its own.
        let stat = "42 (tokio (rt) x) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9";
        assert_eq!(parse_process(stat), Some(3.25));
        assert_eq!(parse_process("42 (x) S 1"), None);
    }
}
