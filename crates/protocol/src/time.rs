//! Timestamps on the wire.
//!
//! Protocol v1 writes RFC 3339 strings. Agents already in the field also send Unix seconds
//! (the original agent's prebuilt build does), so the reader accepts both. A guest's clock is
//! never trusted: the host keeps it only as "guest time" beside its own receive time.

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A point in time as a sender stated it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub DateTime<Utc>);

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        Self(Utc::now())
    }

    /// From whole Unix seconds; `None` when out of chrono's range.
    pub fn from_unix_seconds(secs: i64) -> Option<Self> {
        Utc.timestamp_opt(secs, 0).single().map(Self)
    }

    /// RFC 3339 with the precision we write on the wire (milliseconds).
    pub fn to_rfc3339(&self) -> String {
        self.0.to_rfc3339_opts(SecondsFormat::Millis, true)
    }
}

impl From<DateTime<Utc>> for Timestamp {
    fn from(value: DateTime<Utc>) -> Self {
        Self(value)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Wire<'a> {
            Text(#[serde(borrow)] std::borrow::Cow<'a, str>),
            Seconds(i64),
            Fractional(f64),
        }
        match Wire::deserialize(deserializer)? {
            Wire::Text(text) => DateTime::parse_from_rfc3339(&text)
                .map(|t| Self(t.with_timezone(&Utc)))
                .map_err(|e| serde::de::Error::custom(format!("timestamp `{text}`: {e}"))),
            Wire::Seconds(secs) => Self::from_unix_seconds(secs)
                .ok_or_else(|| serde::de::Error::custom("timestamp out of range")),
            Wire::Fractional(secs) if secs.is_finite() && secs.abs() < 1e12 => {
                Self::from_unix_seconds(secs as i64)
                    .ok_or_else(|| serde::de::Error::custom("timestamp out of range"))
            }
            Wire::Fractional(_) => Err(serde::de::Error::custom("timestamp out of range")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_and_unix_seconds_are_both_read() {
        let a: Timestamp = serde_json::from_str("\"2026-11-21T23:28:51.711816137+00:00\"")
            .expect("rfc3339 parses");
        let b: Timestamp = serde_json::from_str("1795304844").expect("seconds parse");
        assert_eq!(a.0.timestamp(), 1_795_303_731);
        assert_eq!(b.0.timestamp(), 1_795_304_844);
    }

    #[test]
    fn garbage_timestamps_are_refused() {
        assert!(serde_json::from_str::<Timestamp>("\"yesterday\"").is_err());
        assert!(serde_json::from_str::<Timestamp>("1e300").is_err());
        assert!(serde_json::from_str::<Timestamp>("true").is_err());
    }
}
