//! The metric against the data README's check figures: BM25 order scores nDCG@10 0.5058
//! on DL19 and 0.4458 on DL21 (the published BM25 figures).

use std::path::{Path, PathBuf};

use trainer::data::{read_candidates, Qrels};
use trainer::metrics::ndcg_at_k;

fn data(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/trec-dl")
        .join(file)
}

fn bm25_ndcg(run: &str, qrels: &str) -> f64 {
    let queries = read_candidates(&data(run)).unwrap();
    let qrels = Qrels::read(&data(qrels)).unwrap();
    let mut total = 0.0;
    let mut count = 0;
    for q in &queries {
        let Some(judgments) = qrels.by_query.get(&q.qid) else {
            continue;
        };
        let mut candidates: Vec<_> = q.candidates.iter().collect();
        candidates.sort_by_key(|c| c.bm25_rank);
        let ranking: Vec<&str> = candidates.iter().map(|c| c.docid.as_str()).collect();
        total += ndcg_at_k(&ranking, judgments, 10);
        count += 1;
    }
    total / count as f64
}

#[test]
fn bm25_check_figures() {
    let dl19 = bm25_ndcg("dl19-bm25-top100.jsonl", "qrels.dl19-passage.txt");
    assert!(
        (dl19 - 0.5058).abs() < 5e-5,
        "DL19 BM25 nDCG@10 = {dl19:.5}"
    );
    let dl21 = bm25_ndcg("dl21-bm25-top100.jsonl", "qrels.dl21-passage.txt");
    assert!(
        (dl21 - 0.4458).abs() < 5e-5,
        "DL21 BM25 nDCG@10 = {dl21:.5}"
    );
}

#[test]
fn malformed_input_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.jsonl");
    std::fs::write(
        &path,
        "{\"qid\": \"1\", \"query\": \"q\", \"candidates\": [{\"docid\": \"d\", \"text\": \"t\"}]}\n{\"qid\": 2,\n",
    )
    .unwrap();
    let err = read_candidates(&path).unwrap_err().to_string();
    assert!(err.contains("bad.jsonl:2:"), "{err}");
    // A query without candidates has nothing to re-rank (eval used to panic on it).
    std::fs::write(
        &path,
        "{\"qid\": \"1\", \"query\": \"q\", \"candidates\": [{\"docid\": \"d\", \"text\": \"t\"}]}\n\n{\"qid\": \"2\", \"query\": \"q\", \"candidates\": []}\n",
    )
    .unwrap();
    let err = read_candidates(&path).unwrap_err().to_string();
    assert!(
        err.contains("bad.jsonl:3:") && err.contains("no candidates"),
        "{err}"
    );
    let qrels = dir.path().join("qrels.txt");
    std::fs::write(&qrels, "1 Q0 d1 2\n1 Q0 d2\n").unwrap();
    let err = Qrels::read(&qrels).unwrap_err().to_string();
    assert!(err.contains("qrels.txt:2:"), "{err}");
}
