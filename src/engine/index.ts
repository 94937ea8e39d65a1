/** The engine layer's public face: backends, the stage contract, manifests, the native loader. */
export * from './contract.js';
export * from './backend.js';
export * from './signature.js';
export * from './registry.js';
export * from './onnxruntime.js';
export * from './tensorrt.js';
export * from './engine-manifest.js';
export * from './native.js';
export * from './engine-builder.js';
export * from './stage-source.js';
export * from './manifest.js';
export * from './modelset.js';
export * from './resident.js';
