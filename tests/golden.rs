//! Golden-output tests: inputs and expected outputs are files a reviewer can read.
//!
//! - `tests/golden/diagnostics/NAME.train` → `NAME.stderr`: the exact rendered diagnostics.
//! - `examples/NAME.train` → `tests/golden/params/NAME.txt`: `kpc check`'s summary.
//!
//! Run with `KPC_BLESS=1` to (re)write the expected files after an intended change, then
//! review the diff.

use kpc::diag::{SourceMap, render_all};
use std::path::{Path, PathBuf};

fn bless() -> bool {
    std::env::var_os("KPC_BLESS").is_some()
}

/// Compares `actual` with the file at `expected`, or writes it when blessing.
fn compare(expected: &Path, actual: &str, failures: &mut Vec<String>) {
    if bless() {
        std::fs::write(expected, actual).expect("write golden file");
        return;
    }
    match std::fs::read_to_string(expected) {
        Ok(want) if want == actual => {}
        Ok(want) => failures.push(format!("{}:\n--- expected\n{want}\n--- actual\n{actual}", expected.display())),
        Err(e) => failures.push(format!("{}: {e} (run with KPC_BLESS=1 to create it)\n--- actual\n{actual}", expected.display())),
    }
}

fn files_with_ext(dir: &str, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    v.sort();
    v
}

#[test]
fn diagnostics_match_golden_files() {
    let cases = files_with_ext("tests/golden/diagnostics", "train");
    assert!(cases.len() >= 40, "expected at least 40 diagnostic cases, found {}", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let mut sources = SourceMap::new();
        let actual = match kpc::check::check_file(case, &mut sources) {
            Ok(_) => format!("unexpectedly checked clean: {}\n", case.display()),
            Err(diags) => {
                assert!(!diags.is_empty(), "{}: an error without a diagnostic", case.display());
                render_all(&diags, &sources)
            }
        };
        compare(&case.with_extension("stderr"), &actual, &mut failures);
    }
    assert!(failures.is_empty(), "{} golden diagnostic(s) differ:\n\n{}", failures.len(), failures.join("\n\n"));
}

#[test]
fn examples_check_clean_with_golden_parameter_tables() {
    let examples = files_with_ext("examples", "train");
    assert_eq!(examples.len(), 5, "the five spec examples");
    let mut failures = Vec::new();
    for ex in &examples {
        let mut sources = SourceMap::new();
        let job = kpc::check::check_file(ex, &mut sources)
            .unwrap_or_else(|d| panic!("{} does not check:\n{}", ex.display(), render_all(&d, &sources)));
        let name = ex.file_stem().expect("file name").to_string_lossy().to_string();
        let actual = kpc::report::check_summary(&job);
        compare(&Path::new("tests/golden/params").join(format!("{name}.txt")), &actual, &mut failures);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn graph_text_of_every_example_in_every_mode_matches_golden_files() {
    let mut failures = Vec::new();
    for ex in files_with_ext("examples", "train") {
        let mut sources = SourceMap::new();
        let job = kpc::check::check_file(&ex, &mut sources).expect("example checks");
        let programs = kpc::passes::programs::build(&job).unwrap_or_else(|u| panic!("{}: {}", ex.display(), u.what));
        let name = ex.file_stem().expect("name").to_string_lossy().to_string();
        let modes: Vec<(&str, Vec<&kpc::ir::Program>)> = vec![
            ("forward", vec![&programs.forward]),
            ("train", programs.train.iter().collect()),
            ("eval", programs.eval.iter().collect()),
        ];
        for (mode, progs) in modes {
            let text: String = progs.iter().map(|p| kpc::ir::print::text(p)).collect();
            compare(&Path::new("tests/golden/graphs").join(format!("{name}.{mode}.txt")), &text, &mut failures);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Ops that only a train program may contain.
fn train_only(op: &kpc::ir::Op) -> bool {
    use kpc::ir::Op;
    matches!(
        op,
        Op::DropoutMask { .. }
            | Op::Assign
            | Op::Update(_)
            | Op::GradOf(_)
            | Op::OptState { .. }
            | Op::SoftmaxGrad
            | Op::LogSoftmaxGrad
            | Op::NllRowsGrad { .. }
            | Op::ScatterAdd { .. }
            | Op::LastGrad
            | Op::SliceSeqGrad { .. }
            | Op::RecurrentGrad { .. }
            | Op::ClipScale { .. }
    )
}

#[test]
fn eval_programs_have_no_gradient_mask_or_state_write_and_train_programs_do() {
    for ex in files_with_ext("examples", "train") {
        let mut sources = SourceMap::new();
        let job = kpc::check::check_file(&ex, &mut sources).expect("example checks");
        let programs = kpc::passes::programs::build(&job).expect("programs");
        let eval = programs.eval.as_ref().expect("every example has an eval source");
        for n in eval.graph.g.node_indices() {
            let op = &eval.graph.node(n).op;
            assert!(!train_only(op), "{}: the eval program contains {}", ex.display(), op.name());
        }
        assert!(eval.effects.iter().all(|e| matches!(eval.graph.node(*e).op, kpc::ir::Op::Output(_))), "eval only writes outputs");
    }
    // digits_mlp's train program has dropout masks, batchnorm state writes and gradients.
    let mut sources = SourceMap::new();
    let job = kpc::check::check_file(Path::new("examples/digits_mlp.train"), &mut sources).expect("checks");
    let programs = kpc::passes::programs::build(&job).expect("programs");
    let train = &programs.train[0];
    let has = |pred: &dyn Fn(&kpc::ir::Op) -> bool| train.graph.g.node_indices().any(|n| pred(&train.graph.node(n).op));
    assert!(has(&|o| matches!(o, kpc::ir::Op::DropoutMask { .. })), "a dropout mask");
    assert!(has(&|o| matches!(o, kpc::ir::Op::Assign)), "running-statistic writes");
    assert!(has(&|o| matches!(o, kpc::ir::Op::Update(_))), "optimizer updates");
    assert!(has(&|o| matches!(o, kpc::ir::Op::LogSoftmaxGrad)), "a backward pass");
}
