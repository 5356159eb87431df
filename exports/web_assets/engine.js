// styleslim's web engine: one exported artifact on ONNX Runtime Web or LiteRT.js (WASM, CPU), float or int8
// tensors in and out. The measurement harness (harness.html) and the exported page (index.html) both use it.
// Runtime files are served beside the page under runtimes/ (copied from npm, never from a CDN).

const RUNTIMES = new URL('./runtimes/', import.meta.url);
let litert = null;  // LiteRT.js loads its WASM module once per page

async function loadOnnxruntime(url, threads) {
  const ort = await import(new URL('onnxruntime-web/ort.wasm.min.mjs', RUNTIMES).href);
  ort.env.wasm.wasmPaths = new URL('onnxruntime-web/', RUNTIMES).href;
  ort.env.wasm.numThreads = threads;
  ort.env.wasm.proxy = false;
  ort.env.logLevel = 'error';
  const session = await ort.InferenceSession.create(url, {executionProviders: ['wasm'], graphOptimizationLevel: 'all'});
  const meta = (names, list) => names.map((name, i) => ({name, dtype: (list && list[i] && list[i].type) || 'float32',
                                                         shape: (list && list[i] && list[i].shape) || null}));
  return {
    inputs: meta(session.inputNames, session.inputMetadata),
    outputs: meta(session.outputNames, session.outputMetadata),
    // ORT drops to one thread where the page is not cross-origin isolated (no SharedArrayBuffer).
    info: {runtime: 'onnxruntime-web', provider: 'wasm',
           threads: crossOriginIsolated ? ort.env.wasm.numThreads : 1, simd: ort.env.wasm.simd !== false,
           cross_origin_isolated: crossOriginIsolated},
    async run(tensors) {
      const feeds = {};
      session.inputNames.forEach((name, i) => {
        feeds[name] = new ort.Tensor(tensors[i].dtype || 'float32', tensors[i].data, tensors[i].dims);
      });
      const out = await session.run(feeds);
      return session.outputNames.map(name => ({data: out[name].data, dims: Array.from(out[name].dims),
                                               dtype: out[name].type}));
    },
  };
}

async function loadLitert(url, threads) {
  const threaded = threads > 1 && crossOriginIsolated;
  if (!litert) {
    litert = (async () => {
      const core = await import(new URL('litert/core.js', RUNTIMES).href);
      await core.loadLiteRt(new URL('litert/wasm/', RUNTIMES).href, {threads: threaded});
      return core;
    })();
  }
  const core = await litert;
  const model = await core.loadAndCompile(url, {accelerator: 'wasm', cpuOptions: {numThreads: threaded ? threads : 1}});
  const details = list => list.map(d => ({name: d.name, dtype: d.dtype, shape: Array.from(d.shape)}));
  const inputs = details(model.getInputDetails());
  return {
    inputs,
    outputs: details(model.getOutputDetails()),
    info: {runtime: 'litert-web', provider: 'wasm (XNNPACK)', threads: threaded ? threads : 1, simd: true,
           cross_origin_isolated: crossOriginIsolated},
    async run(tensors) {
      const feeds = {};
      inputs.forEach((d, i) => { feeds[d.name] = new core.Tensor(tensors[i].data, tensors[i].dims); });
      const out = await model.run(feeds);
      Object.values(feeds).forEach(t => t.delete());
      return model.getOutputDetails().map(d => {
        const tensor = out[d.name];
        const result = {data: tensor.toTypedArray().slice(), dims: Array.from(d.shape), dtype: d.dtype};
        tensor.delete();
        return result;
      });
    },
  };
}

const LOADERS = {'onnxruntime-web': loadOnnxruntime, 'litert-web': loadLitert};

// A model ready to run: {inputs, outputs, info, run(tensors)}; tensors are {data: TypedArray, dims, dtype}.
export async function loadModel(runtime, url, threads = Math.min(4, navigator.hardwareConcurrency || 1)) {
  const load = LOADERS[runtime];
  if (!load) throw new Error(`unknown web runtime ${runtime}; choose from ${Object.keys(LOADERS).join(', ')}`);
  return load(url, threads);
}
