"""Cryptographic primitives, one module each; numpy, gmpy2, phe, cryptography and the standard library only.

DPF (SecEmb):  dpf_keys (parameters, keys as plain data), dpf_gen (Gen / PathGen / ConvertGen),
               dpf_expand (full-domain tree expansion), dpf_eval (evaluator and its explicit EvalContext),
               prg (fixed-key AES PRGs), ring (Z_2^k dtype and exact products), workers (thread pool).
Paillier (FedMF): paillier (PaillierPublic / PaillierPrivate, ObfuscatorPool), paillier_codec
               (PackingCodec), packed_matrix (PackedMatrixPublic / PackedMatrixPrivate).
Shared:        fixed_point (the one fixed-point codec), secret_sharing (additive shares in Z_2^k),
               sealed (X25519 + HKDF + AES-GCM boxes).
"""
