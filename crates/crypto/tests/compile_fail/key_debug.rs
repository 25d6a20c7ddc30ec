fn main() {
    let k = patchbay_crypto::KeyBytes::random();
    println!("{:?}", k);
}
