//! Conversions between std time types and the wire's `Duration`/`Timestamp`.

use std::time::{Duration, SystemTime};

/// Saturates instead of failing: a lifetime of centuries is still "forever".
pub(crate) fn to_proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos() as i32,
    }
}

/// A negative wire duration is read as zero.
pub(crate) fn from_proto_duration(d: prost_types::Duration) -> Duration {
    Duration::try_from(d).unwrap_or(Duration::ZERO)
}

pub(crate) fn from_proto_timestamp(t: prost_types::Timestamp) -> Option<SystemTime> {
    SystemTime::try_from(t).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip_and_saturate() {
        let d = Duration::new(1200, 5);
        assert_eq!(from_proto_duration(to_proto_duration(d)), d);
        assert_eq!(to_proto_duration(Duration::MAX).seconds, i64::MAX);
        let negative = prost_types::Duration {
            seconds: -1,
            nanos: 0,
        };
        assert_eq!(from_proto_duration(negative), Duration::ZERO);
    }
}
