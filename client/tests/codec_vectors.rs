//! The canonical args vectors shared with the Python and Node suites
//! (`node/test/fixtures/canonical-args.json`, written from Python's `json.dumps`): the Rust
//! codec makes exactly the same bytes.

use serde_json::Value;

#[test]
fn rust_encodes_each_shared_vector_as_python_does() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../node/test/fixtures/canonical-args.json"
    );
    let vectors: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut checked = 0;
    for vector in &vectors {
        if vector["rust"] != Value::Bool(true) {
            continue; // lone surrogates: no Rust string holds them
        }
        let input: Value = serde_json::from_str(vector["input"].as_str().unwrap()).unwrap();
        let encoded = String::from_utf8(cacheback::encode_args(&input).unwrap()).unwrap();
        assert_eq!(
            encoded,
            vector["expected"].as_str().unwrap(),
            "{}",
            vector["name"]
        );
        checked += 1;
    }
    assert_eq!(checked, 15);
}
