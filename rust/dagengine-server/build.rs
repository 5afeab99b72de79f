//! Generates the tonic/prost code of `protos/dagengine/v1/engine.proto`, with the `protoc`
//! binary shipped by the `protoc-bin-vendored` crate (nothing to install on the machine), and
//! its encoded `FileDescriptorSet` (`dagengine_v1.bin`) for server reflection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build runs the protoc named by PROTOC.
    std::env::set_var("PROTOC", protoc);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../protos");
    let proto = root.join("dagengine/v1/engine.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("dagengine_v1.bin"))
        .build_client(true)
        .build_server(true)
        .compile_protos(&[proto], &[root])?;
    Ok(())
}
