//! The `kpc` binary end to end: exit statuses and where output goes.

use std::process::Command;

fn kpc(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kpc")).args(args).output().expect("run kpc")
}

#[test]
fn check_succeeds_with_the_parameter_table_on_stdout() {
    let out = kpc(&["check", "examples/digits_mlp.train"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("fc1.weight") && stdout.contains("[128, 64]"), "{stdout}");
    assert!(stdout.contains("bn1.num_batches_tracked"), "{stdout}");
    assert!(out.stderr.is_empty());
}

#[test]
fn a_user_error_exits_1_with_a_located_diagnostic_on_stderr() {
    let out = kpc(&["check", "tests/golden/diagnostics/unknown_layer.train"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tests/golden/diagnostics/unknown_layer.train:11:19"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn a_missing_file_exits_1() {
    let out = kpc(&["check", "no/such/file.train"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read `no/such/file.train`"));
}

#[test]
fn bad_usage_exits_2() {
    assert_eq!(kpc(&[]).status.code(), Some(2));
    assert_eq!(kpc(&["check"]).status.code(), Some(2));
    assert_eq!(kpc(&["frobnicate", "x.train"]).status.code(), Some(2));
    assert_eq!(kpc(&["check", "a.train", "--no-such-flag"]).status.code(), Some(2));
}

#[test]
fn help_exists_for_every_subcommand() {
    let out = kpc(&["check", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: kpc check"));
}

fn run_with_metrics(example: &str, seed: &str, out: &std::path::Path) -> std::process::Output {
    kpc(&["run", example, "--seed", seed, "--metrics", out.to_str().expect("utf-8 path"), "--quiet"])
}

/// The metrics log without timing and memory fields (seconds, samples/s, compile and first-step
/// times, peak RSS).
fn without_timings(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .expect("metrics file")
        .lines()
        .filter(|l| !["compile", "first_step", "end"].iter().any(|k| l.contains(&format!("\"kind\":\"{k}\""))))
        .map(|l| l.split(",\"seconds\"").next().expect("prefix").to_string())
        .collect()
}

fn final_eval(path: &std::path::Path, key: &str) -> f64 {
    let last = std::fs::read_to_string(path).expect("metrics").lines().rfind(|l| l.contains("\"kind\":\"epoch\"")).expect("an epoch").to_string();
    let v: serde_json::Value = serde_json::from_str(&last).expect("json");
    v[key].as_f64().expect("metric")
}

#[test]
fn dense_examples_reach_their_accuracy_floors() {
    let dir = std::env::temp_dir().join(format!("kpc-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    for (example, floor) in [("iris", 0.90), ("digits_mlp", 0.95), ("breast_cancer", 0.94)] {
        let m = dir.join(format!("{example}.jsonl"));
        let out = run_with_metrics(&format!("examples/{example}.train"), "0", &m);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stdout.is_empty(), "--quiet prints nothing");
        let acc = final_eval(&m, "eval_accuracy");
        assert!(acc >= floor, "{example}: eval accuracy {acc} < {floor}");
    }
}

#[test]
fn the_same_seed_gives_identical_metrics_and_another_seed_does_not() {
    let dir = std::env::temp_dir().join(format!("kpc-seed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (a, b, c) = (dir.join("a.jsonl"), dir.join("b.jsonl"), dir.join("c.jsonl"));
    for (p, seed) in [(&a, "5"), (&b, "5"), (&c, "6")] {
        assert_eq!(run_with_metrics("examples/digits_mlp.train", seed, p).status.code(), Some(0));
    }
    assert_eq!(without_timings(&a), without_timings(&b));
    assert_ne!(without_timings(&a), without_timings(&c));
}

#[test]
fn init_then_run_from_it_equals_run_with_the_seed() {
    let dir = std::env::temp_dir().join(format!("kpc-init-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let w = dir.join("w.safetensors");
    assert_eq!(kpc(&["init", "examples/iris.train", "-o", w.to_str().expect("path"), "--seed", "3"]).status.code(), Some(0));
    let (a, b) = (dir.join("a.jsonl"), dir.join("b.jsonl"));
    assert_eq!(kpc(&["run", "examples/iris.train", "--seed", "3", "--epochs", "3", "--metrics", a.to_str().expect("path"), "--quiet"]).status.code(), Some(0));
    assert_eq!(
        kpc(&["run", "examples/iris.train", "--seed", "3", "--epochs", "3", "--init", w.to_str().expect("path"), "--metrics", b.to_str().expect("path"), "--quiet"]).status.code(),
        Some(0)
    );
    assert_eq!(without_timings(&a), without_timings(&b));
}

#[test]
fn save_then_eval_reports_the_final_eval_metrics() {
    let dir = std::env::temp_dir().join(format!("kpc-save-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (w, m) = (dir.join("w.safetensors"), dir.join("m.jsonl"));
    let out = kpc(&["run", "examples/breast_cancer.train", "--epochs", "2", "--save", w.to_str().expect("path"), "--metrics", m.to_str().expect("path"), "--quiet"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let out = kpc(&["eval", "examples/breast_cancer.train", "--weights", w.to_str().expect("path"), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let logged = final_eval(&m, "eval_loss");
    let evaluated = v["eval_loss"].as_f64().expect("eval_loss");
    assert!((logged - evaluated).abs() <= 1e-6 * logged.abs().max(1.0), "{logged} vs {evaluated}");
}

#[test]
fn init_weights_that_do_not_match_are_listed_and_exit_1() {
    let dir = std::env::temp_dir().join(format!("kpc-mismatch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let w = dir.join("iris.safetensors");
    assert_eq!(kpc(&["init", "examples/iris.train", "-o", w.to_str().expect("path")]).status.code(), Some(0));
    let out = kpc(&["run", "examples/digits_mlp.train", "--init", w.to_str().expect("path"), "--quiet"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for name in ["missing `fc1.weight`", "missing `bn1.running_var`", "unexpected `fc.weight`"] {
        assert!(stderr.contains(name), "{name} not in:\n{stderr}");
    }
}

#[test]
fn a_diverging_run_stops_with_exit_1_naming_epoch_and_step() {
    let dir = std::env::temp_dir().join(format!("kpc-nan-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("data")).expect("dir");
    std::fs::copy("examples/data/iris_train.csv", dir.join("data/iris_train.csv")).expect("copy");
    let job = "data { train = csv(\"data/iris_train.csv\", x = rest, y = \"label\") }\nmodel { input x: f32[4]\ninput y: i64\nfc = linear(4, 3)\nlogits = x * 1e30 |> fc }\nloss cross_entropy(logits, y)\noptimizer sgd(lr = 1e30)\n";
    std::fs::write(dir.join("nan.train"), job).expect("write");
    let out = kpc(&["run", dir.join("nan.train").to_str().expect("path"), "--quiet"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("epoch 1, step 1"), "{stderr}");
}

#[test]
fn sequence_examples_reach_their_accuracy_floors() {
    let dir = std::env::temp_dir().join(format!("kpc-seq-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    for (example, floor) in [("words_gru", 0.70), ("docnames_seq2seq", 0.25)] {
        let m = dir.join(format!("{example}.jsonl"));
        let out = kpc(&["run", &format!("examples/{example}.train"), "--metrics", m.to_str().expect("path"), "--quiet"]);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        let acc = final_eval(&m, "eval_accuracy");
        assert!(acc >= floor, "{example}: eval accuracy {acc} < {floor}");
    }
}

#[test]
fn pretrained_embeddings_load_and_stay_frozen() {
    let dir = std::env::temp_dir().join(format!("kpc-pretrained-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let here = std::env::current_dir().expect("cwd");
    let data = here.join("tests/reference/data");
    let job = format!(
        "data {{ train = jsonl(\"{d}/words_small_train.jsonl\", chars = chars(\"word\"), lang = label(\"lang\")) }}\n\
         model {{ input chars: i64[seq]\n input lang: i64\n\
         emb = embedding(chars.vocab, 16, padding_idx = 0, from = \"{d}/words_small_emb.npy\")\n\
         rnn = gru(16, 8)\n out = linear(8, lang.classes)\n logits = chars |> emb |> rnn |> last |> out }}\n\
         loss cross_entropy(logits, lang)\noptimizer adam(lr = 1e-2)\ntrain {{ epochs = 1 }}\n",
        d = data.display()
    );
    let file = dir.join("pretrained.train");
    std::fs::write(&file, job).expect("write job");
    let saved = dir.join("w.safetensors");
    let out = kpc(&["run", file.to_str().expect("path"), "--save", saved.to_str().expect("path"), "--quiet"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let bytes = std::fs::read(&saved).expect("checkpoint");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let emb: Vec<f32> = st.tensor("emb.weight").expect("emb.weight").data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    // The .npy holds 49×16 little-endian f32 after its header; compare the tail.
    let npy = std::fs::read(data.join("words_small_emb.npy")).expect("npy");
    let rows: Vec<f32> = npy[npy.len() - 49 * 16 * 4..].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    assert_eq!(emb, rows, "a frozen pretrained embedding is saved exactly as loaded");
}

#[test]
fn graph_prints_text_and_dot_for_every_mode() {
    for mode in ["forward", "train", "eval"] {
        let out = kpc(&["graph", "examples/words_gru.train", "--mode", mode]);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("program "));
        let dot = kpc(&["graph", "examples/digits_mlp.train", "--mode", mode, "--format", "dot"]);
        assert_eq!(dot.status.code(), Some(0));
        let text = String::from_utf8_lossy(&dot.stdout);
        assert!(text.starts_with("digraph ") && text.trim_end().ends_with('}'), "{text}");
    }
    assert_eq!(kpc(&["graph", "examples/iris.train", "--mode", "sideways"]).status.code(), Some(2));
}

#[test]
fn a_job_needing_absurd_memory_is_refused_before_allocating() {
    let dir = std::env::temp_dir().join(format!("kpc-big-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("data")).expect("dir");
    std::fs::copy("examples/data/iris_train.csv", dir.join("data/iris_train.csv")).expect("copy");
    // 0.9 billion parameters: within the checker's 2^31 bound, but with gradients and Adam's
    // two moments it needs 16.8 GiB.
    let job = "data { train = csv(\"data/iris_train.csv\", x = rest, y = \"label\") }\n\
               model { input x: f32[4]\ninput y: i64\na = linear(4, 30000)\nc = linear(30000, 30000)\nb = linear(30000, 3)\n\
               logits = x |> a |> relu |> c |> relu |> b }\nloss cross_entropy(logits, y)\noptimizer adam()\n";
    std::fs::write(dir.join("big.train"), job).expect("write");
    let out = kpc(&["run", dir.join("big.train").to_str().expect("path"), "--quiet"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("GiB of working memory"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn thread_count_and_profiling_do_not_change_results() {
    let dir = std::env::temp_dir().join(format!("kpc-threads-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let job = "tests/jobs/wide_digits.train";
    let (one, two, profiled) = (dir.join("1.jsonl"), dir.join("2.jsonl"), dir.join("p.jsonl"));
    for (m, extra) in [(&one, &["--threads", "1"][..]), (&two, &["--threads", "2"][..]), (&profiled, &["--threads", "1", "--profile"][..])] {
        let mut args = vec!["run", job, "--quiet", "--metrics", m.to_str().expect("path")];
        args.extend_from_slice(extra);
        let out = kpc(&args);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        if m == &profiled {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("profile of the train step") && text.contains("gemm"), "{text}");
        }
    }
    let plain = |p: &std::path::Path| -> Vec<String> { without_timings(p).into_iter().filter(|l| !l.contains("\"kind\":\"profile\"")).collect() };
    assert_eq!(plain(&one), plain(&two));
    assert_eq!(plain(&one), plain(&profiled));
    let records = std::fs::read_to_string(&profiled).expect("metrics");
    let gemm_share: f64 = records
        .lines()
        .filter(|l| l.contains("\"kind\":\"profile\"") && l.contains("\"program\":\"train step\"") && l.contains("\"class\":\"gemm\""))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json")["share"].as_f64().expect("share"))
        .sum();
    // Three wide layers: the products are most of the step.
    assert!(gemm_share > 0.5, "gemm share {gemm_share}");
    for p in [one, two, profiled] {
        let first = std::fs::read_to_string(p).expect("metrics").lines().find(|l| l.contains("\"kind\":\"first_step\"")).map(String::from);
        assert!(first.is_some(), "a first_step record");
    }
}
