//! `process_*` metrics (the names every Prometheus client library uses, so
//! stock dashboards and alerts work): CPU seconds, resident and virtual
//! memory, open and maximum file descriptors, start time, threads.
//!
//! Read from `/proc/self` at each scrape, with std only: the `prometheus`
//! crate's `process` feature would add `procfs` (and three more crates to
//! both lock files) and counts CPU in whole seconds; this reads it in clock
//! ticks. Off Linux (no `/proc`) the collector exports nothing.

use std::collections::HashMap;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Gauge, Metric, MetricFamily, MetricType};

/// Exports the `process_*` families, computed afresh at each scrape.
pub struct ProcessCollector {
    descs: Vec<Desc>,
}

/// Name, help and type of each family, in the order they are exported.
const FAMILIES: [(&str, &str, MetricType); 7] = [
    ("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", MetricType::COUNTER),
    ("process_resident_memory_bytes", "Resident memory size in bytes.", MetricType::GAUGE),
    ("process_virtual_memory_bytes", "Virtual memory size in bytes.", MetricType::GAUGE),
    ("process_open_fds", "Number of open file descriptors.", MetricType::GAUGE),
    ("process_max_fds", "Maximum number of open file descriptors (the soft limit).", MetricType::GAUGE),
    ("process_start_time_seconds", "Start time of the process since unix epoch in seconds.", MetricType::GAUGE),
    ("process_threads", "Number of OS threads in the process.", MetricType::GAUGE),
];

impl ProcessCollector {
    pub fn new() -> ProcessCollector {
        let descs = FAMILIES
            .iter()
            .map(|(name, help, _)| Desc::new(name.to_string(), help.to_string(), vec![], HashMap::new()))
            .collect::<Result<_, _>>()
            .expect("valid metric names");
        ProcessCollector { descs }
    }
}

impl Default for ProcessCollector {
    fn default() -> Self {
        Self::new()
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some(sample) = Sample::read() else { return Vec::new() };
        let values = [
            Some(sample.cpu_seconds),
            sample.resident_bytes,
            Some(sample.virtual_bytes),
            sample.open_fds,
            sample.max_fds,
            sample.start_time_seconds,
            Some(sample.threads),
        ];
        FAMILIES.iter().zip(values).filter_map(|(family, value)| value.map(|v| one_sample_family(family, v))).collect()
    }
}

fn one_sample_family(&(name, help, kind): &(&str, &str, MetricType), value: f64) -> MetricFamily {
    let mut metric = Metric::default();
    if kind == MetricType::COUNTER {
        let mut counter = Counter::default();
        counter.set_value(value);
        metric.set_counter(counter);
    } else {
        let mut gauge = Gauge::default();
        gauge.set_value(value);
        metric.set_gauge(gauge);
    }
    let mut family = MetricFamily::default();
    family.set_name(name.to_string());
    family.set_help(help.to_string());
    family.set_field_type(kind);
    family.set_metric(vec![metric]);
    family
}

/// One reading of `/proc/self`; `None` fields could not be read.
struct Sample {
    cpu_seconds: f64,
    virtual_bytes: f64,
    threads: f64,
    resident_bytes: Option<f64>,
    open_fds: Option<f64>,
    max_fds: Option<f64>,
    start_time_seconds: Option<f64>,
}

impl Sample {
    fn read() -> Option<Sample> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let stat = Stat::parse(&stat)?;
        let ticks = clock_ticks_per_second();
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| boot_time(&s));
        Some(Sample {
            cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
            virtual_bytes: stat.vsize as f64,
            threads: stat.threads as f64,
            resident_bytes: resident_kib(&status).map(|kib| kib as f64 * 1024.0),
            open_fds: std::fs::read_dir("/proc/self/fd").ok().map(|dir| dir.count() as f64),
            max_fds: max_open_files(&limits).map(|n| n as f64),
            start_time_seconds: boot.map(|b| b as f64 + stat.starttime as f64 / ticks),
        })
    }
}

/// The fields of `/proc/self/stat` used here (proc(5) numbering).
#[derive(Debug, PartialEq)]
struct Stat {
    utime: u64,
    stime: u64,
    threads: u64,
    starttime: u64,
    vsize: u64,
}

impl Stat {
    fn parse(text: &str) -> Option<Stat> {
        // Field 2 is the command in parentheses and may hold spaces or ')':
        // the fields after the last ')' start at field 3.
        let rest: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
        let field = |n: usize| rest.get(n - 3)?.parse::<u64>().ok();
        Some(Stat {
            utime: field(14)?,
            stime: field(15)?,
            threads: field(20)?,
            starttime: field(22)?,
            vsize: field(23)?,
        })
    }
}

/// `VmRSS:  1234 kB` from `/proc/self/status`.
fn resident_kib(status: &str) -> Option<u64> {
    status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()
}

/// The soft limit of `Max open files` in `/proc/self/limits` (`None` when unlimited).
fn max_open_files(limits: &str) -> Option<u64> {
    limits.lines().find_map(|l| l.strip_prefix("Max open files"))?.split_whitespace().next()?.parse().ok()
}

/// `btime` of `/proc/stat`: the boot time in seconds since the epoch.
fn boot_time(stat: &str) -> Option<u64> {
    stat.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), read from the auxiliary
/// vector the kernel gave the process (`AT_CLKTCK`), without libc; 100, the
/// Linux value on every mainstream architecture, if it cannot be read.
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| std::fs::read("/proc/self/auxv").ok().and_then(|a| auxv_clock_ticks(&a)).unwrap_or(100.0))
}

/// `AT_CLKTCK` in an auxiliary vector: (type, value) pairs of native words.
fn auxv_clock_ticks(auxv: &[u8]) -> Option<f64> {
    const AT_CLKTCK: usize = 17;
    const WORD: usize = std::mem::size_of::<usize>();
    let word = |bytes: &[u8]| usize::from_ne_bytes(bytes.try_into().expect("chunks of one word"));
    auxv.chunks_exact(2 * WORD)
        .map(|pair| (word(&pair[..WORD]), word(&pair[WORD..])))
        .find(|&(kind, value)| kind == AT_CLKTCK && value > 0)
        .map(|(_, value)| value as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_a_command_name_with_spaces_and_parentheses() {
        let line = "4242 (tokio (w) 1) S 1 4242 4242 0 -1 4194560 2093 0 0 0 250 75 0 0 20 0 9 0 123456 987654321 3000 18446744073709551615";
        let stat = Stat::parse(line).expect("parses");
        assert_eq!(stat, Stat { utime: 250, stime: 75, threads: 9, starttime: 123456, vsize: 987654321 });
    }

    #[test]
    fn limits_status_and_boot_time_lines_are_read() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            20000                1048576              files     \n";
        assert_eq!(max_open_files(limits), Some(20000));
        assert_eq!(max_open_files("Max open files            unlimited            unlimited            files"), None);
        assert_eq!(resident_kib("Name:\tstrangler\nVmRSS:\t    5120 kB\n"), Some(5120));
        assert_eq!(boot_time("cpu  1 2 3\nbtime 1700000000\n"), Some(1_700_000_000));
    }

    #[test]
    fn the_clock_tick_rate_comes_from_the_auxiliary_vector() {
        let words: Vec<usize> = vec![6, 4096, 17, 250, 0, 0];
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        assert_eq!(auxv_clock_ticks(&bytes), Some(250.0));
        assert_eq!(auxv_clock_ticks(&bytes[..2 * std::mem::size_of::<usize>()]), None);
    }
}
