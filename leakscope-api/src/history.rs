//! `/api/v1/processes/{pid}/history`: the resident-memory history the leak detector judges, as
//! it keeps it (bounded, downsampled), so a graph of an incident shows what the verdict saw.

use serde::{Deserialize, Serialize};

use crate::{Verdict, float::nan_if_null};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryResponse {
    pub pid: u32,
    pub comm: String,
    #[serde(deserialize_with = "nan_if_null")]
    pub start_time_seconds: f64,
    /// Oldest first, at most the detector's bound (512 points by default). Samples taken in the
    /// warm-up after start or exec are not kept, and an exec starts a new history. Once the
    /// bound is reached, neighbouring samples are merged into one point.
    pub points: Vec<HistoryPoint>,
    /// The lowest resident size of each time slice of the analysed window, whose rise the
    /// verdict rests on; empty while the history is too short for a verdict.
    pub floors: Vec<HistoryFloor>,
    /// The fitted (Theil–Sen) growth rate, bytes per second; absent while the history is too
    /// short for a verdict.
    pub rate_bytes_per_sec: Option<f64>,
    /// The verdict on this history; absent before the first sample.
    pub verdict: Option<Verdict>,
}

/// One point: a sample, or the samples merged into it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryPoint {
    /// The middle of the merged samples' times.
    #[serde(deserialize_with = "nan_if_null")]
    pub unix_time_seconds: f64,
    /// Mean resident bytes (file + anon + shmem) of the merged samples.
    pub resident_bytes: u64,
    /// The lowest of them: merging keeps the floors a leak raises.
    pub min_resident_bytes: u64,
    pub samples: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryFloor {
    #[serde(deserialize_with = "nan_if_null")]
    pub start_unix_time_seconds: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub end_unix_time_seconds: f64,
    pub floor_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_reads_back_as_it_was_with_absent_values_null() {
        let h = HistoryResponse {
            pid: 7,
            comm: "celery".into(),
            start_time_seconds: 1.7e9,
            points: vec![HistoryPoint {
                unix_time_seconds: 1.7e9 + 61.0,
                resident_bytes: 3 << 20,
                min_resident_bytes: 2 << 20,
                samples: 2,
            }],
            floors: Vec::new(),
            rate_bytes_per_sec: None,
            verdict: Some(Verdict::Stable),
        };
        let v = serde_json::to_value(&h).unwrap();
        assert!(v["rate_bytes_per_sec"].is_null(), "{v}");
        assert_eq!(v["points"][0]["resident_bytes"], 3 << 20);
        let back: HistoryResponse = serde_json::from_value(v).unwrap();
        assert_eq!(back, h);
    }
}
