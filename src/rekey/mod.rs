//! Per-tunnel rekey engines: decide when to rekey (timer, kernel soft expiry,
//! acquire) and drive the make-before-break primitive of [`crate::xfrm`].
