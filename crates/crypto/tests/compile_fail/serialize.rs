fn main() {
    let s = patchbay_crypto::SecretString::new("canary".to_owned());
    let _ = serde_json::to_string(&s);
}
