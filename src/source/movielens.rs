use super::Record;

/// One MovieLens rating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rating {
    /// User id as written in the file.
    pub user: String,
    /// Item (movie) id as written in the file.
    pub item: String,
    /// Rating, 1 to 5.
    pub rating: u8,
    /// Unix seconds.
    pub timestamp_s: i64,
    /// 1-based line number in the file.
    pub line: u64,
}

/// A malformed `u.data` row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("u.data line {line}: {reason}")]
pub struct RatingsError {
    /// 1-based line number.
    pub line: u64,
    /// What is wrong.
    pub reason: String,
}

impl Rating {
    /// Event time in ms.
    pub fn ts_ms(&self) -> i64 {
        self.timestamp_s * 1000
    }

    /// The honest event mapping: `like` for 4 or 5 stars, otherwise `view`.
    pub fn event_type(&self) -> &'static str {
        if self.rating >= 4 {
            "like"
        } else {
            "view"
        }
    }

    /// Stable event id: each user rates a movie at most once.
    pub fn event_id(&self) -> String {
        format!("ml-{}-{}", self.user, self.item)
    }

    /// The event as a producer publishes it: key = user id, value = JSON.
    pub fn to_record(&self) -> Record {
        let value = serde_json::json!({
            "event_id": self.event_id(),
            "user_id": self.user,
            "item_id": self.item,
            "event_type": self.event_type(),
            "ts": self.ts_ms(),
            "rating": self.rating,
        });
        Record {
            key: Some(self.user.as_bytes().to_vec()),
            value: value.to_string().into_bytes(),
            line: self.line,
            ts: Some(self.ts_ms()),
        }
    }
}

/// Parses `u.data` (tab-separated user, item, rating, unix seconds) and sorts it stably by
/// (timestamp, line number).
///
/// # Errors
/// [`RatingsError`] for the first malformed row.
pub fn read_movielens(bytes: &[u8]) -> Result<Vec<Rating>, RatingsError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|error| RatingsError { line: 0, reason: error.to_string() })?;
    let mut ratings = Vec::new();
    for (index, row) in text.lines().enumerate() {
        let line = index as u64 + 1;
        if row.trim().is_empty() {
            continue;
        }
        let fail = |reason: &str| RatingsError { line, reason: reason.to_owned() };
        let fields: Vec<&str> = row.split('\t').collect();
        let [user, item, rating, timestamp] = fields.as_slice() else {
            return Err(fail("expected 4 tab-separated fields"));
        };
        let rating: u8 = rating.parse().map_err(|_| fail("rating is not an integer"))?;
        if !(1..=5).contains(&rating) {
            return Err(fail("rating outside 1..=5"));
        }
        let timestamp_s: i64 =
            timestamp.parse().map_err(|_| fail("timestamp is not an integer"))?;
        if user.is_empty() || item.is_empty() {
            return Err(fail("empty user or item id"));
        }
        ratings.push(Rating {
            user: (*user).to_owned(),
            item: (*item).to_owned(),
            rating,
            timestamp_s,
            line,
        });
    }
    ratings.sort_by_key(|rating| (rating.timestamp_s, rating.line));
    Ok(ratings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_stably_by_time_then_line() {
        let data = b"1\t10\t5\t200\n2\t20\t3\t100\n3\t30\t4\t200\n";
        let ratings = read_movielens(data).unwrap();
        let lines: Vec<u64> = ratings.iter().map(|rating| rating.line).collect();
        assert_eq!(lines, [2, 1, 3]);
        assert_eq!(ratings[0].event_type(), "view");
        assert_eq!(ratings[1].event_type(), "like");
        assert_eq!(ratings[1].ts_ms(), 200_000);
    }

    #[test]
    fn rejects_malformed_rows_with_line_number() {
        let error = read_movielens(b"1\t10\t5\t200\n1\t10\tfive\t200\n").unwrap_err();
        assert_eq!(error.line, 2);
        assert!(read_movielens(b"1\t10\t9\t200\n").is_err());
        assert!(read_movielens(b"1\t10\t5\n").is_err());
    }

    #[test]
    fn record_is_a_valid_event() {
        let rating = Rating {
            user: "7".into(),
            item: "42".into(),
            rating: 5,
            timestamp_s: 881250949,
            line: 1,
        };
        let record = rating.to_record();
        let event = crate::event::decode(
            &record.value,
            &crate::event::EventTypes::default(),
            &crate::event::DecodeLimits::default(),
        )
        .unwrap();
        assert_eq!(event.ts.0, 881_250_949_000);
        assert_eq!(event.rating, Some(5.0));
        assert_eq!(record.key.as_deref(), Some(&b"7"[..]));
    }
}
