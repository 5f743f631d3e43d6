//! Ranking metrics as trec_eval computes them (see `../shared/data/README.md`).

use std::collections::HashMap;

/// nDCG@k with linear gain (the grade), `log2(rank + 1)` discount, and the ideal DCG
/// from all judged grades of the query. A query judged all-zero scores 0, as in
/// trec_eval; callers skip queries that have no judgments at all.
pub fn ndcg_at_k(ranking: &[&str], judgments: &HashMap<String, u32>, k: usize) -> f64 {
    let mut ideal: Vec<u32> = judgments.values().copied().collect();
    ideal.sort_unstable_by(|a, b| b.cmp(a));
    let dcg = |grades: &mut dyn Iterator<Item = u32>| -> f64 {
        grades
            .take(k)
            .enumerate()
            .map(|(i, g)| g as f64 / ((i + 2) as f64).log2())
            .sum()
    };
    let idcg = dcg(&mut ideal.into_iter());
    if idcg <= 0.0 {
        return 0.0;
    }
    let got = dcg(&mut ranking
        .iter()
        .map(|d| judgments.get(*d).copied().unwrap_or(0)));
    got / idcg
}

/// Reciprocal rank of the first document with grade ≥ `min_grade` within the top `k`
/// (TREC DL binarises passage judgments at grade 2 for binary measures).
pub fn mrr_at_k(
    ranking: &[&str],
    judgments: &HashMap<String, u32>,
    k: usize,
    min_grade: u32,
) -> f64 {
    ranking
        .iter()
        .take(k)
        .position(|d| judgments.get(*d).copied().unwrap_or(0) >= min_grade)
        .map(|i| 1.0 / (i + 1) as f64)
        .unwrap_or(0.0)
}

/// Sorts candidates by descending score; ties keep their input order (BM25 order).
pub fn rank_by_score<'a>(docids: &[&'a str], scores: &[f32]) -> Vec<&'a str> {
    let mut order: Vec<usize> = (0..docids.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order.into_iter().map(|i| docids[i]).collect()
}

/// One query's ranking in TREC run format (`qid Q0 docid rank score tag`, best first,
/// rank from 1), the input `trec_eval` reads: `mrank eval --run-dir` writes these.
pub fn trec_run_lines(qid: &str, docids: &[&str], scores: &[f32], tag: &str) -> String {
    let mut order: Vec<usize> = (0..docids.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut out = String::new();
    for (rank, i) in order.into_iter().enumerate() {
        out.push_str(&format!(
            "{qid} Q0 {} {} {} {tag}\n",
            docids[i],
            rank + 1,
            scores[i]
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trec_run_lines_rank_best_first() {
        let lines = trec_run_lines("q1", &["a", "b", "c"], &[0.5, 2.0, -1.0], "mrank-full");
        assert_eq!(
            lines,
            "q1 Q0 b 1 2 mrank-full\nq1 Q0 a 2 0.5 mrank-full\nq1 Q0 c 3 -1 mrank-full\n"
        );
    }

    fn judged(pairs: &[(&str, u32)]) -> HashMap<String, u32> {
        pairs.iter().map(|(d, g)| (d.to_string(), *g)).collect()
    }

    #[test]
    fn ndcg_by_hand() {
        let j = judged(&[("a", 3), ("b", 2), ("c", 0), ("z", 1)]);
        // Ranking c, a, b: DCG = 0/log2(2) + 3/log2(3) + 2/log2(4) = 1.8928 + 1.
        // Ideal 3, 2, 1: 3 + 2/log2(3) + 1/2 = 4.7619.
        let got = ndcg_at_k(&["c", "a", "b"], &j, 10);
        let expected = (3.0 / 3f64.log2() + 1.0) / (3.0 + 2.0 / 3f64.log2() + 0.5);
        assert!((got - expected).abs() < 1e-12);
        // Perfect order scores 1; k = 1 only looks at the first document.
        assert!((ndcg_at_k(&["a", "b", "z"], &j, 10) - 1.0).abs() < 1e-12);
        assert_eq!(ndcg_at_k(&["c", "a"], &j, 1), 0.0);
        // Judged, but nothing relevant: 0.
        assert_eq!(ndcg_at_k(&["c"], &judged(&[("c", 0)]), 10), 0.0);
    }

    #[test]
    fn mrr_by_hand() {
        let j = judged(&[("a", 1), ("b", 2)]);
        assert_eq!(mrr_at_k(&["x", "a", "b"], &j, 10, 2), 1.0 / 3.0);
        assert_eq!(mrr_at_k(&["x", "a", "b"], &j, 10, 1), 0.5);
        assert_eq!(mrr_at_k(&["x", "a", "b"], &j, 2, 2), 0.0);
    }

    #[test]
    fn ranking_is_stable_on_ties() {
        assert_eq!(
            rank_by_score(&["a", "b", "c"], &[1.0, 2.0, 1.0]),
            vec!["b", "a", "c"]
        );
    }
}
