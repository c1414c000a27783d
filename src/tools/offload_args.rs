//! `cloud_offload`'s arguments: the task (and its aliases), the input
//! files, the timeout and the model, each checked before anything changes,
//! with a text that says what to pass.

use crate::wire::limits::{DEFAULT_TIMEOUT_MINUTES, MAX_TASK_CHARS, MAX_TIMEOUT_MINUTES};
use crate::wire::transfer;
use serde_json::Value;

const TASK_ALIASES: [&str; 7] = [
    "task",
    "prompt",
    "description",
    "request",
    "content",
    "instruction",
    "query",
];

/// What the sandbox should do: the first task alias given, trimmed.
pub fn task(args: &Value) -> Result<String, String> {
    let task = TASK_ALIASES
        .iter()
        .find_map(|k| args.get(*k).and_then(Value::as_str))
        .map(str::trim)
        .unwrap_or_default()
        .to_string();
    if task.is_empty() {
        return Err("cloud_offload requires a `task` parameter (a string describing what the sandbox should do). Aliases accepted: task, prompt, description, request, content, instruction, query.".into());
    }
    if task.chars().count() > MAX_TASK_CHARS {
        return Err(format!("The task is longer than {MAX_TASK_CHARS} characters. Put long material in a file and pass it in `files`."));
    }
    Ok(task)
}

/// `force=true` (or "true" in any case, as models write it: "True"): run a
/// task again within the duplicate window. Anything else is false (spec).
pub fn force(args: &Value) -> bool {
    match &args["force"] {
        Value::Bool(b) => *b,
        Value::String(s) => s.trim().eq_ignore_ascii_case("true"),
        _ => false,
    }
}

/// The rest of the arguments, checked once the task and the pairing are.
pub struct Rest {
    /// (path as given, name sent to the sandbox)
    pub files: Vec<(String, String)>,
    pub timeout_minutes: u64,
    pub model: Option<String>,
}

pub fn rest(args: &Value) -> Result<Rest, String> {
    let files = files(args)?;
    let mut named = Vec::new();
    for f in files {
        let Some(n) = transfer::safe_file_name(&basename(&f)) else {
            return Err(format!("Cannot read file: {f} (not a usable file name)"));
        };
        if named.iter().any(|(_, m)| *m == n) {
            return Err(format!(
                "Two files are named {n}; rename one so the sandbox can tell them apart."
            ));
        }
        named.push((f, n));
    }
    Ok(Rest {
        files: named,
        timeout_minutes: timeout(args)?,
        model: model(args)?,
    })
}

/// `files` (or `file_paths`): paths as strings, at most `MAX_FILES`.
fn files(args: &Value) -> Result<Vec<String>, String> {
    const NOT_PATHS: &str = "`files` must be an array of file paths (strings).";
    let files: Vec<String> = match args.get("files").or_else(|| args.get("file_paths")) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|f| {
                f.as_str()
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .ok_or_else(|| NOT_PATHS.to_string())
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(NOT_PATHS.into()),
    };
    if files.len() > transfer::MAX_FILES {
        return Err(format!(
            "At most {} files per offload ({} given).",
            transfer::MAX_FILES,
            files.len()
        ));
    }
    Ok(files)
}

/// Minutes from 1 to the maximum; a number, or its string form ("30"),
/// which models often send and every other tool reads (`tools::args`).
fn timeout(args: &Value) -> Result<u64, String> {
    match args.get("timeout_minutes").or_else(|| args.get("timeout")) {
        None | Some(Value::Null) => Ok(DEFAULT_TIMEOUT_MINUTES),
        Some(v) => match v
            .as_f64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse::<f64>().ok()))
        {
            Some(t) if t >= 1.0 && t <= MAX_TIMEOUT_MINUTES as f64 => Ok(t.floor() as u64),
            _ => Err(format!(
                "timeout_minutes must be a number from 1 to {MAX_TIMEOUT_MINUTES}."
            )),
        },
    }
}

/// The schema's `maxLength` for `model`, in characters as it counts them.
const MAX_MODEL_CHARS: usize = 200;

fn model(args: &Value) -> Result<Option<String>, String> {
    match args.get("model") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(m)) => {
            let len = m.chars().count();
            if len > MAX_MODEL_CHARS {
                return Err(format!("model is {len} characters long; a model name has at most {MAX_MODEL_CHARS}. Pass only the model's name, or leave it out for the cluster's default."));
            }
            Ok(Some(m.trim().to_string()).filter(|m| !m.is_empty()))
        }
        Some(_) => Err("model must be a string naming an inference model.".into()),
    }
}

/// The last component of a path, as a file is named to the sandbox.
pub fn basename(path: &str) -> String {
    path.rsplit(['/', '\\']).next().unwrap_or(path).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn force_is_true_only_for_true_in_any_case() {
        for yes in [json!(true), json!("true"), json!("True"), json!(" TRUE ")] {
            assert!(force(&json!({ "force": yes })), "{yes}");
        }
        for no in [
            json!(false),
            json!("false"),
            json!("yes"),
            json!(1),
            json!(null),
            json!([true]),
        ] {
            assert!(!force(&json!({ "force": no })), "{no}");
        }
        assert!(!force(&json!({})));
    }

    #[test]
    fn timeout_reads_numbers_and_their_string_forms() {
        let t = |v: Value| timeout(&json!({ "timeout_minutes": v }));
        assert_eq!(t(json!(45)), Ok(45));
        assert_eq!(t(json!("45")), Ok(45));
        assert_eq!(t(json!(" 12.5 ")), Ok(12));
        assert_eq!(timeout(&json!({ "timeout": "5" })), Ok(5));
        assert_eq!(timeout(&json!({})), Ok(DEFAULT_TIMEOUT_MINUTES));
        for bad in [json!("soon"), json!("0"), json!(0), json!(-3), json!(true)] {
            let e = t(bad.clone()).expect_err("refused");
            assert!(
                e.contains(&format!("from 1 to {MAX_TIMEOUT_MINUTES}")),
                "{bad}: {e}"
            );
        }
        let over = (MAX_TIMEOUT_MINUTES + 1).to_string();
        assert!(t(json!(over)).is_err());
    }

    #[test]
    fn an_overlong_model_is_refused_naming_the_limit() {
        assert_eq!(
            model(&json!({ "model": " gpt-5.4 " })),
            Ok(Some("gpt-5.4".into()))
        );
        assert_eq!(model(&json!({ "model": "  " })), Ok(None));
        assert_eq!(
            model(&json!({ "model": "é".repeat(200) })).map(|m| m.map(|m| m.chars().count())),
            Ok(Some(200))
        );
        let e = model(&json!({ "model": "m".repeat(201) })).expect_err("refused");
        assert!(
            e.contains("201 characters") && e.contains("at most 200"),
            "{e}"
        );
        assert!(!e.contains("mmmm"), "the value is not echoed: {e}");
        assert!(model(&json!({ "model": 5 })).is_err());
    }
}
