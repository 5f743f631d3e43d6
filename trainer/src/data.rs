//! TREC Deep Learning data: BM25 top-100 candidate lists (JSONL) and graded judgments
//! (qrels), as `../shared/data/README.md` describes them.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::{Result, TrainerError};

#[derive(Debug, Clone, Deserialize)]
pub struct Candidate {
    pub docid: String,
    pub text: String,
    #[serde(default)]
    pub bm25_rank: Option<u32>,
    #[serde(default)]
    pub bm25_score: Option<f64>,
}

/// One query with its candidate passages, in BM25 order.
#[derive(Debug, Clone, Deserialize)]
pub struct QueryCandidates {
    pub qid: String,
    pub query: String,
    pub candidates: Vec<Candidate>,
}

/// Reads a candidate JSONL file; a malformed line, or a query listed on two lines (its
/// metrics would count twice), is reported with file and line number.
pub fn read_candidates(path: &Path) -> Result<Vec<QueryCandidates>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| TrainerError::Input(format!("{}: cannot read: {e}", path.display())))?;
    let mut out = Vec::new();
    let mut first_line: HashMap<String, usize> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let q: QueryCandidates = serde_json::from_str(line).map_err(|e| {
            TrainerError::Input(format!(
                "{}:{}: not a candidate list ({e}); expected {{\"qid\", \"query\", \"candidates\": [{{\"docid\", \"text\"}}, ...]}}",
                path.display(),
                i + 1
            ))
        })?;
        if q.candidates.is_empty() {
            return Err(TrainerError::Input(format!(
                "{}:{}: query {} has no candidates; a re-ranking query needs at least one",
                path.display(),
                i + 1,
                q.qid
            )));
        }
        if let Some(first) = first_line.insert(q.qid.clone(), i + 1) {
            return Err(TrainerError::Input(format!(
                "{}:{}: query {} was already listed on line {first}; put each query's \
                 candidates on one line",
                path.display(),
                i + 1,
                q.qid
            )));
        }
        out.push(q);
    }
    Ok(out)
}

/// Graded judgments: qid → docid → grade. Unjudged candidates count as grade 0.
#[derive(Debug, Clone, Default)]
pub struct Qrels {
    pub by_query: HashMap<String, HashMap<String, u32>>,
}

impl Qrels {
    /// Reads TREC qrels (`qid Q0 docid grade`); a malformed line names file and line.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TrainerError::Input(format!("{}: cannot read: {e}", path.display())))?;
        let mut by_query: HashMap<String, HashMap<String, u32>> = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.is_empty() {
                continue;
            }
            let bad = |why: &str| {
                TrainerError::Input(format!(
                    "{}:{}: {why}; expected `qid Q0 docid grade`",
                    path.display(),
                    i + 1
                ))
            };
            if fields.len() != 4 {
                return Err(bad(&format!("{} fields", fields.len())));
            }
            let grade: i64 = fields[3]
                .parse()
                .map_err(|_| bad("grade is not an integer"))?;
            by_query
                .entry(fields[0].to_string())
                .or_default()
                .insert(fields[2].to_string(), grade.max(0) as u32);
        }
        Ok(Qrels { by_query })
    }

    pub fn grade(&self, qid: &str, docid: &str) -> u32 {
        self.by_query
            .get(qid)
            .and_then(|m| m.get(docid))
            .copied()
            .unwrap_or(0)
    }

    /// Queries judged here that are absent from `queries` (counted so callers can warn).
    pub fn unknown_queries(&self, queries: &[QueryCandidates]) -> usize {
        let known: std::collections::HashSet<&str> =
            queries.iter().map(|q| q.qid.as_str()).collect();
        self.by_query
            .keys()
            .filter(|q| !known.contains(q.as_str()))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_listed_twice_is_refused_with_both_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.jsonl");
        let line = |qid: &str| {
            format!(
                r#"{{"qid": "{qid}", "query": "q", "candidates": [{{"docid": "d", "text": "t"}}]}}"#
            )
        };
        std::fs::write(&path, [line("1"), line("2"), line("1")].join("\n")).unwrap();
        let e = read_candidates(&path).unwrap_err().to_string();
        assert!(e.contains("c.jsonl:3:") && e.contains("line 1"), "{e}");
        std::fs::write(&path, [line("1"), line("2")].join("\n")).unwrap();
        assert_eq!(read_candidates(&path).unwrap().len(), 2);
    }
}
