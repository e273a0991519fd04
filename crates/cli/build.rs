//! The Debian multiarch triplet of the target (`x86_64-linux-gnu`), where
//! the Debian package puts the library: `/usr/lib/<triplet>/xrename/`;
//! and, for the wheel, a check that the library is in the Python package.
fn main() {
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    let triplet = match (arch.as_str(), env.as_str()) {
        ("x86", e) => format!("i386-linux-{e}"),
        ("arm", "gnu") => "arm-linux-gnueabihf".to_owned(),
        (a, e) => format!("{a}-linux-{e}"),
    };
    println!("cargo:rustc-env=XRENAME_MULTIARCH={triplet}");
    if std::env::var_os("CARGO_FEATURE_WHEEL").is_some() {
        let dir = std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
        let lib = dir.join("../../python/xrename/libxrename.so");
        println!("cargo:rerun-if-changed={}", lib.display());
        if !lib.is_file() {
            panic!(
                "{} is missing: the wheel would have no library. Build the wheel with `make wheel` \
                 (scripts/wheel.sh builds libxrename.so and puts it there first).",
                lib.display()
            );
        }
    }
}
