//! Turns the PostgreSQL half of the integration suite on when ALOHOOK_TEST_POSTGRES_URL is set;
//! without it those tests show as ignored, with the reason, instead of silently passing.
fn main() {
    println!("cargo::rerun-if-env-changed=ALOHOOK_TEST_POSTGRES_URL");
    println!("cargo::rustc-check-cfg=cfg(postgres_tests)");
    if std::env::var_os("ALOHOOK_TEST_POSTGRES_URL").is_some_and(|v| !v.is_empty()) {
        println!("cargo::rustc-cfg=postgres_tests");
    }
}
