//! Summaries of repeated measurements: median, min and max.

/// Median, min and max of a set of samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub count: usize,
}

impl Summary {
    /// `None` for no samples. NaNs are ignored.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|s| !s.is_nan()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        // An even count takes the mean of the middle two, as most tools do.
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Summary {
            median,
            min: sorted[0],
            max: sorted[n - 1],
            count: n,
        })
    }

    /// `1.23 s (1.10–1.50)`, in seconds.
    pub fn seconds(&self) -> String {
        format!("{:.2} s ({:.2}–{:.2})", self.median, self.min, self.max)
    }

    /// `123 ms (110–150)`, samples in milliseconds; one decimal below 10 ms.
    pub fn millis(&self) -> String {
        let f = |v: f64| {
            if v.abs() < 10.0 {
                format!("{v:.1}")
            } else {
                format!("{v:.0}")
            }
        };
        format!("{} ms ({}–{})", f(self.median), f(self.min), f(self.max))
    }
}

/// The ratio of two medians, `a / b`, as `2.4×`.
pub fn ratio(a: &Summary, b: &Summary) -> String {
    if b.median <= 0.0 {
        return "–".into();
    }
    format!("{:.1}×", a.median / b.median)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let odd = Summary::of(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!(
            (odd.median, odd.min, odd.max, odd.count),
            (3.0, 1.0, 5.0, 3)
        );
        let even = Summary::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((even.median, even.min, even.max), (2.5, 1.0, 4.0));
        let one = Summary::of(&[7.0]).unwrap();
        assert_eq!((one.median, one.min, one.max), (7.0, 7.0, 7.0));
    }

    #[test]
    fn empty_and_nan_samples() {
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(Summary::of(&[f64::NAN]), None);
        assert_eq!(Summary::of(&[f64::NAN, 2.0]).unwrap().median, 2.0);
    }

    #[test]
    fn formatting_and_ratio() {
        let a = Summary::of(&[2.0, 2.5, 3.0]).unwrap();
        let b = Summary::of(&[1.0]).unwrap();
        assert_eq!(a.seconds(), "2.50 s (2.00–3.00)");
        assert_eq!(ratio(&a, &b), "2.5×");
        assert_eq!(
            Summary::of(&[12.4, 99.6]).unwrap().millis(),
            "56 ms (12–100)"
        );
        assert_eq!(
            Summary::of(&[0.44, 3.0, 12.0]).unwrap().millis(),
            "3.0 ms (0.4–12)"
        );
        assert_eq!(ratio(&a, &Summary::of(&[0.0]).unwrap()), "–");
    }
}
