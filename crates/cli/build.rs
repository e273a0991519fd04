//! The Debian multiarch triplet of the target (`x86_64-linux-gnu`), where
//! the Debian package puts the library: `/usr/lib/<triplet>/xrename/`.
fn main() {
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    let triplet = match (arch.as_str(), env.as_str()) {
        ("x86", e) => format!("i386-linux-{e}"),
        ("arm", "gnu") => "arm-linux-gnueabihf".to_owned(),
        (a, e) => format!("{a}-linux-{e}"),
    };
    println!("cargo:rustc-env=XRENAME_MULTIARCH={triplet}");
}
