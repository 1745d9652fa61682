//! Generates the `rustng.control.v1` messages, client and server from the repository's proto
//! (protoc comes with `scripts/setup.sh`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../../proto/rustng/control/v1/control_plane.proto";
    println!("cargo:rerun-if-changed={proto}");
    tonic_prost_build::configure().compile_protos(&[proto], &["../../proto"])?;
    Ok(())
}
