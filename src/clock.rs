//! Wall-clock helpers: RFC 3339 timestamps and sortable run ids, without a date library.

use std::time::{SystemTime, UNIX_EPOCH};

/// (year, month, day, hour, minute, second) in UTC.
fn civil(secs: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-from-civil inverse.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        ((rem % 3600) / 60) as u32,
        (rem % 60) as u32,
    )
}

/// A duration as a user writes one: a number with a unit (`250ms`, `30s`, `5m`, `2h`), or a
/// plain number of seconds; fractions are allowed (`1.5h`).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let not_a_duration =
        || format!("`{text}` is not a duration; write e.g. `30s`, `5m`, `1h` or 0");
    if number.is_empty() {
        return Err(not_a_duration());
    }
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "`{text}`: unknown unit `{other}`; write a number with ms, s, m or h (`30s`, `5m`), or 0"
            ));
        }
    };
    let value: f64 = number.parse().map_err(|_| not_a_duration())?;
    std::time::Duration::try_from_secs_f64(value * scale).map_err(|e| format!("`{text}`: {e}"))
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn rfc3339(secs: u64) -> String {
    let (y, mo, d, h, mi, s) = civil(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// A run id that sorts by time and is unique across concurrent processes:
/// `20261122-183512-0471a2b` (date, time, milliseconds, then a salt). The milliseconds make two
/// runs of the same second sort in the order they started (`pipe show -2` relies on the order
/// of the ids); the salt keeps concurrent processes apart.
pub fn run_id() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let (y, mo, d, h, mi, s) = civil(now.as_secs());
    let ms = now.subsec_millis();
    let salt =
        blake3::hash(format!("{}:{}", std::process::id(), now.as_nanos()).as_bytes()).to_hex();
    format!(
        "{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}-{ms:03}{}",
        &salt[..4]
    )
}

pub fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations_as_users_write_them() {
        let d = |t| parse_duration(t).unwrap();
        assert_eq!(d("0"), Duration::ZERO);
        assert_eq!(d("90"), Duration::from_secs(90));
        assert_eq!(d("30s"), Duration::from_secs(30));
        assert_eq!(d("5m"), Duration::from_secs(300));
        assert_eq!(d("1.5h"), Duration::from_secs(5400));
        assert_eq!(d("250ms"), Duration::from_millis(250));
        assert_eq!(d(" 2 min"), Duration::from_secs(120));
        let e = parse_duration("5 minutes").unwrap_err();
        assert!(e.contains("unknown unit `minutes`"), "{e}");
        let e = parse_duration("soon").unwrap_err();
        assert!(e.contains("`soon` is not a duration"), "{e}");
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn run_ids_of_one_second_sort_by_time() {
        let a = run_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = run_id();
        assert!(a < b, "{a} then {b}");
        assert_eq!(a.len(), "20261122-183512-0471a2b".len());
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_376_112), "2026-11-22T19:35:12Z");
    }
}
