//! Export: writes one ONNX graph per sub-structure plus the manifest of their cost and
//! quality (see DESIGN.md "Export"). Not built yet: the foundation issue only sets up
//! the crate so the workspace has its final shape.
