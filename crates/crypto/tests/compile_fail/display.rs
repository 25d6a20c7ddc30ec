fn main() {
    let s = patchbay_crypto::SecretString::new("canary".to_owned());
    println!("{}", s);
}
