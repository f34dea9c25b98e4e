//! A job's compression mode as `--compression` and the declarative file write it: `fixed`, `adaptive`
//! (levels 1..9) or `adaptive:MIN..MAX`.

use dg_proto::v1 as pb;

/// How a job compresses, as `--compression` and the declarative file write it.
pub fn text(a: Option<&pb::AdaptiveCompression>) -> String {
    match a {
        Some(a) => format!("adaptive:{}..{}", a.min_level, a.max_level),
        None => "fixed".into(),
    }
}

/// Parses `fixed`, `adaptive` (levels 1..9) or `adaptive:MIN..MAX`; `fixed` is the message with both
/// bounds 0, which an update reads as "turn it off".
pub fn mode(s: &str) -> Result<pb::AdaptiveCompression, String> {
    let bad = || format!("{s:?}: expected fixed, adaptive or adaptive:MIN..MAX (e.g. adaptive:1..9)");
    match s.trim() {
        "fixed" => Ok(pb::AdaptiveCompression { min_level: 0, max_level: 0 }),
        "adaptive" => Ok(pb::AdaptiveCompression { min_level: 1, max_level: 9 }),
        other => {
            let (min, max) = other.strip_prefix("adaptive:").and_then(|r| r.split_once("..")).ok_or_else(bad)?;
            let min_level = min.trim().parse().map_err(|_| bad())?;
            let max_level = max.trim().parse().map_err(|_| bad())?;
            Ok(pb::AdaptiveCompression { min_level, max_level })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_modes_parse_and_print_back() {
        assert_eq!(mode("fixed").unwrap(), pb::AdaptiveCompression { min_level: 0, max_level: 0 });
        let a = mode("adaptive").unwrap();
        assert_eq!((a.min_level, a.max_level), (1, 9));
        let a = mode("adaptive:-3..12").unwrap();
        assert_eq!(text(Some(&a)), "adaptive:-3..12");
        assert_eq!(text(None), "fixed");
        for bad in ["adaptive:3", "adaptive:a..b", "fast", ""] {
            assert!(mode(bad).is_err(), "{bad:?}");
        }
    }
}
