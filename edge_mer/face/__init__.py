"""Face analysis for the runtime and preprocessing, torch-free: 68-point landmarks
(:mod:`edge_mer.face.landmarks`) and face detection."""
