//! Generates the tonic/prost code of `protos/dagengine/v1/engine.proto`, with the `protoc`
//! binary shipped by the `protoc-bin-vendored` crate (nothing to install on the machine).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build runs the protoc named by PROTOC.
    std::env::set_var("PROTOC", protoc);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../protos");
    let proto = root.join("dagengine/v1/engine.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&[proto], &[root])?;
    Ok(())
}
