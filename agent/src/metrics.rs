//! The `metrics` method: a snapshot from /proc.

use crate::agent::{self, Mode};
use serde_json::{json, Value};
use std::fs;

/// CPU time from the aggregate `cpu` line of /proc/stat, in ms:
/// (busy = user+nice+system+irq+softirq+steal, idle = idle+iowait, cpus).
fn cpu(stat: &str, ticks_per_s: f64) -> (f64, f64, u64) {
    let mut busy = 0.0;
    let mut idle = 0.0;
    let mut cpus = 0;
    for line in stat.lines() {
        let mut f = line.split_whitespace();
        match f.next() {
            Some("cpu") => {
                let v: Vec<f64> = f.map(|x| x.parse().unwrap_or(0.0)).collect();
                let g = |i: usize| v.get(i).copied().unwrap_or(0.0);
                busy = g(0) + g(1) + g(2) + g(5) + g(6) + g(7);
                idle = g(3) + g(4);
            }
            Some(c) if c.starts_with("cpu") => cpus += 1,
            _ => {}
        }
    }
    let ms = 1000.0 / ticks_per_s;
    (busy * ms, idle * ms, cpus)
}

/// (total, available) bytes from /proc/meminfo.
fn memory(meminfo: &str) -> (u64, u64) {
    let field = |name: &str| {
        meminfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

/// Whether a /proc/diskstats device counts: whole virtio disks in a VM,
/// every whole disk but loop/ram/zram/device-mapper/md in host mode.
fn counted_disk(name: &str, mode: Mode) -> bool {
    if !std::path::Path::new("/sys/block").join(name).exists() {
        return false; // a partition
    }
    match mode {
        Mode::Init => name.starts_with("vd"),
        Mode::Host => !["loop", "ram", "zram", "dm-", "md"].iter().any(|p| name.starts_with(p)),
    }
}

/// (read, written) bytes from /proc/diskstats.
fn disks(diskstats: &str, mode: Mode) -> (u64, u64) {
    let mut r = 0;
    let mut w = 0;
    for line in diskstats.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || !counted_disk(f[2], mode) {
            continue;
        }
        r += f[5].parse::<u64>().unwrap_or(0) * 512;
        w += f[9].parse::<u64>().unwrap_or(0) * 512;
    }
    (r, w)
}

/// (rx, tx) bytes of every interface but lo from /proc/net/dev.
fn network(netdev: &str) -> (u64, u64) {
    let mut rx = 0;
    let mut tx = 0;
    for line in netdev.lines().skip(2) {
        let Some((iface, rest)) = line.split_once(':') else { continue };
        if iface.trim() == "lo" {
            continue;
        }
        let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
        rx += f.first().copied().unwrap_or(0);
        tx += f.get(8).copied().unwrap_or(0);
    }
    (rx, tx)
}

fn processes() -> u64 {
    fs::read_dir("/proc")
        .map(|d| {
            d.flatten().filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit())).count() as u64
        })
        .unwrap_or(0)
}

/// The `metrics` result.
pub fn collect() -> Value {
    let a = agent::get();
    let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let (busy, idle, cpus) = cpu(&read("/proc/stat"), if hz > 0 { hz as f64 } else { 100.0 });
    let (total, avail) = memory(&read("/proc/meminfo"));
    let (dr, dw) = disks(&read("/proc/diskstats"), a.mode);
    let (rx, tx) = network(&read("/proc/net/dev"));
    json!({
        "uptimeMs": a.uptime_ms(),
        "cpus": cpus,
        "cpuBusyMs": busy,
        "cpuIdleMs": idle,
        "memTotalBytes": total,
        "memUsedBytes": total.saturating_sub(avail),
        "memAvailableBytes": avail,
        "diskReadBytes": dr,
        "diskWriteBytes": dw,
        "netRxBytes": rx,
        "netTxBytes": tx,
        "processes": processes(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_text() {
        let stat =
            "cpu  100 10 50 1000 20 5 5 2 0 0\ncpu0 50 5 25 500 10 2 3 1 0 0\ncpu1 50 5 25 500 10 3 2 1 0 0\nintr 1\n";
        assert_eq!(cpu(stat, 100.0), (1720.0, 10200.0, 2));
        let mem = "MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    400 kB\n";
        assert_eq!(memory(mem), (1024000, 409600));
        let net = "Inter-|   Receive\n face |bytes\n    lo: 100 1 0 0 0 0 0 0 100 1 0 0 0 0 0 0\n  eth0: 2000 1 0 0 0 0 0 0 3000 1 0 0 0 0 0 0\n";
        assert_eq!(network(net), (2000, 3000));
    }
}
