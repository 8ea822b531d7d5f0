//! serde_json writes a non-finite `f64` as `null`. A detector estimate can be NaN (no span to
//! divide by), and one such number must not make a whole response unreadable.

use serde::{Deserialize as _, Deserializer};

/// The value of a float an older agent did not serve: unknown, as `null` would be.
pub(crate) fn nan() -> f64 {
    f64::NAN
}

pub(crate) fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

#[cfg(test)]
mod tests {
    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    struct Sample {
        #[serde(deserialize_with = "super::nan_if_null")]
        x: f64,
    }

    #[test]
    fn a_non_finite_float_comes_back_as_nan() {
        let text = serde_json::to_string(&Sample { x: f64::INFINITY }).unwrap();
        assert_eq!(text, r#"{"x":null}"#);
        let back: Sample = serde_json::from_str(&text).unwrap();
        assert!(back.x.is_nan());
        let finite: Sample = serde_json::from_str(r#"{"x":1.5}"#).unwrap();
        assert_eq!(finite.x, 1.5);
    }
}
