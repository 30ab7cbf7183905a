//! Compiles `vantage/v1/vantage.proto` with protox (pure Rust), so a machine
//! with only cargo can build the workspace: no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "vantage/v1/vantage.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["."])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
