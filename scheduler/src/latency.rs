//! The latency model of one configuration: a batch of `t` padded tokens takes
//! `per_batch + per_token · t` seconds. Calibrated online by least squares over recent
//! batches (exponentially forgotten), starting from the manifest's measurement.

/// Padded tokens per real token in a batch: pairs are sorted by length, and batches
/// mix requests only within a 2:1 length range; the admission headroom covers the rest.
pub const PADDING: f64 = 1.1;

#[derive(Debug, Clone)]
pub struct LatencyModel {
    pub per_batch_s: f64,
    pub per_token_s: f64,
    /// Forgetting factor per observation (weight of the past).
    decay: f64,
    // Exponentially weighted sums of x = tokens, y = seconds.
    w: f64,
    sx: f64,
    sy: f64,
    sxx: f64,
    sxy: f64,
}

impl LatencyModel {
    pub fn new(per_batch_s: f64, per_token_s: f64) -> Self {
        LatencyModel {
            per_batch_s: per_batch_s.max(0.0),
            per_token_s: per_token_s.max(1e-9),
            decay: 0.97,
            w: 0.0,
            sx: 0.0,
            sy: 0.0,
            sxx: 0.0,
            sxy: 0.0,
        }
    }

    /// From a measured batch: `seconds` for `tokens` padded tokens, with a small fixed
    /// per-batch share until batches of other sizes calibrate it.
    pub fn from_reference(seconds: f64, tokens: usize) -> Self {
        let per_batch = seconds * 0.02;
        LatencyModel::new(per_batch, (seconds - per_batch) / tokens.max(1) as f64)
    }

    pub fn predict(&self, padded_tokens: usize) -> f64 {
        self.per_batch_s + self.per_token_s * padded_tokens as f64
    }

    /// Predicted seconds for `tokens` real tokens split into batches of at most
    /// `budget` padded tokens (padding estimated at `PADDING`).
    pub fn predict_work(&self, tokens: usize, budget: usize) -> f64 {
        if tokens == 0 {
            return 0.0;
        }
        let padded = tokens as f64 * PADDING;
        let batches = (padded / budget.max(1) as f64).ceil().max(1.0);
        batches * self.per_batch_s + self.per_token_s * padded
    }

    pub fn observe(&mut self, padded_tokens: usize, seconds: f64) {
        let (x, y) = (padded_tokens as f64, seconds);
        let d = self.decay;
        self.w = d * self.w + 1.0;
        self.sx = d * self.sx + x;
        self.sy = d * self.sy + y;
        self.sxx = d * self.sxx + x * x;
        self.sxy = d * self.sxy + x * y;
        let mean_x = self.sx / self.w;
        let mean_y = self.sy / self.w;
        let var_x = self.sxx / self.w - mean_x * mean_x;
        let cov = self.sxy / self.w - mean_x * mean_y;
        if self.w >= 3.0 && var_x > (0.05 * mean_x).powi(2) {
            // Enough spread in batch sizes: fit both terms.
            let slope = cov / var_x;
            let intercept = mean_y - slope * mean_x;
            if slope > 0.0 && intercept >= 0.0 {
                self.per_token_s = slope;
                self.per_batch_s = intercept;
                return;
            }
        }
        // Batches all alike: keep the per-batch term, fit the per-token one.
        if mean_x > 0.0 {
            self.per_token_s = ((mean_y - self.per_batch_s) / mean_x).max(1e-9);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibrates_both_terms_from_varied_batches() {
        let mut m = LatencyModel::new(0.5, 1e-3); // badly wrong start
        for i in 0..200 {
            let t = 500 + (i * 377) % 7000;
            m.observe(t, 0.004 + 2e-5 * t as f64);
        }
        assert!((m.per_token_s - 2e-5).abs() < 1e-6, "{m:?}");
        assert!((m.per_batch_s - 0.004).abs() < 1e-3, "{m:?}");
    }

    #[test]
    fn calibrates_per_token_from_uniform_batches() {
        let mut m = LatencyModel::new(0.001, 1e-4);
        for _ in 0..100 {
            m.observe(8000, 0.001 + 3e-5 * 8000.0);
        }
        assert!((m.predict(8000) - (0.001 + 0.24)).abs() < 0.01, "{m:?}");
    }
}
