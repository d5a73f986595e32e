//! The sampling decision: which executed read becomes a comparison. Pure: the caller passes
//! the random rolls, so the policy is tested without randomness.

use std::collections::HashMap;

/// What a sampled statement is compared against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Old (the primary) against new: the comparison that matters for cutover.
    Shadow,
    /// Old against old (A/A): differences here are noise (time, concurrent writes).
    Baseline,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Shadow => "shadow",
            Kind::Baseline => "baseline",
        }
    }
}

/// Rates in force: global, per fingerprint, and the A/A share.
#[derive(Debug, Clone, Default)]
pub struct Sampler {
    pub rate: f64,
    pub per_fingerprint: HashMap<u64, f64>,
    pub baseline_rate: f64,
}

impl Sampler {
    /// Decides for one eligible statement; `roll_a` and `roll_b` are uniform in [0, 1).
    /// The shadow comparison wins when both would apply: it is the one operators act on.
    pub fn decide(&self, fingerprint: u64, roll_a: f64, roll_b: f64) -> Option<Kind> {
        let rate = if self.per_fingerprint.is_empty() {
            self.rate
        } else {
            *self.per_fingerprint.get(&fingerprint).unwrap_or(&self.rate)
        };
        if roll_a < rate {
            Some(Kind::Shadow)
        } else if roll_b < self.baseline_rate {
            Some(Kind::Baseline)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_and_per_fingerprint_rates() {
        let mut s = Sampler {
            rate: 0.1,
            ..Default::default()
        };
        assert_eq!(s.decide(7, 0.05, 0.9), Some(Kind::Shadow));
        assert_eq!(s.decide(7, 0.5, 0.0), None);
        s.per_fingerprint.insert(7, 1.0);
        s.per_fingerprint.insert(8, 0.0);
        assert_eq!(s.decide(7, 0.99, 0.9), Some(Kind::Shadow));
        assert_eq!(s.decide(8, 0.0, 0.9), None, "rate 0 for this shape");
        assert_eq!(s.decide(9, 0.05, 0.9), Some(Kind::Shadow), "global rate");
    }

    #[test]
    fn baseline_only_when_not_shadowed() {
        let s = Sampler {
            rate: 0.0,
            baseline_rate: 0.2,
            ..Default::default()
        };
        assert_eq!(s.decide(1, 0.0, 0.1), Some(Kind::Baseline));
        assert_eq!(s.decide(1, 0.0, 0.3), None);
        let s = Sampler {
            rate: 1.0,
            baseline_rate: 1.0,
            ..Default::default()
        };
        assert_eq!(s.decide(1, 0.5, 0.1), Some(Kind::Shadow));
    }
}
