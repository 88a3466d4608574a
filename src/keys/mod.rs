//! Per-peer key pools: QKD output blocks with IDs, consumed in lockstep by
//! both peers and never reused. The only module that holds pools.
