// styleslim in a web page: one exported artifact on ONNX Runtime Web or LiteRT.js (WASM, CPU), and the page
// that stylizes a dropped photo with it. The measurement harness (harness.html) uses loadModel; an exported
// page (index.html) calls startPage. Runtime files sit beside the page under runtimes/ (from npm, no CDN).

const RUNTIMES = new URL('./runtimes/', import.meta.url);
let litert = null;  // LiteRT.js loads its WASM module, threaded or not, once per page
let litertThreaded = null;
let ortThreads = null;  // ONNX Runtime Web starts its WASM threads once per page: the first count stays

async function loadOnnxruntime(url, threads) {
  const ort = await import(new URL('onnxruntime-web/ort.wasm.min.mjs', RUNTIMES).href);
  ort.env.wasm.wasmPaths = new URL('onnxruntime-web/', RUNTIMES).href;
  ortThreads = ortThreads || threads;
  ort.env.wasm.numThreads = ortThreads;
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
           threads: crossOriginIsolated ? ortThreads : 1, simd: ort.env.wasm.simd !== false,
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
  if (!litert) {
    litertThreaded = threads > 1 && crossOriginIsolated;
    litert = (async () => {
      const core = await import(new URL('litert/core.js', RUNTIMES).href);
      await core.loadLiteRt(new URL('litert/wasm/', RUNTIMES).href, {threads: litertThreaded});
      return core;
    })();
  }
  const core = await litert;
  const threaded = litertThreaded && threads > 1;
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

// ---------------------------------------------------------------- the page: a photo in, its stylized picture out

const MULTIPLE = 8;  // a dynamic artifact's sides are padded to this (the networks downsample by up to 8)

function toTensor(pixels, width, height, layout) {
  // RGBA bytes -> float RGB in [0, 1], NCHW (or NHWC)
  const data = new Float32Array(3 * width * height);
  const plane = width * height;
  for (let i = 0; i < plane; i++) {
    for (let c = 0; c < 3; c++) {
      data[layout === 'nhwc' ? 3 * i + c : c * plane + i] = pixels[4 * i + c] / 255;
    }
  }
  return {data, dims: layout === 'nhwc' ? [1, height, width, 3] : [1, 3, height, width], dtype: 'float32'};
}

function readPixels(source, width, height, x = 0, y = 0, square = false) {
  // the source's (x, y, width, height) window, edges replicated past its border; or (square) its centre
  // square resized to width x height
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext('2d');
  const sw = source.width, sh = source.height;
  if (square) {
    const side = Math.min(sw, sh);
    ctx.drawImage(source, (sw - side) / 2, (sh - side) / 2, side, side, 0, 0, width, height);
    return ctx.getImageData(0, 0, width, height).data;
  }
  const w = Math.min(width, sw - x), h = Math.min(height, sh - y);
  ctx.drawImage(source, x, y, w, h, 0, 0, w, h);
  const image = ctx.getImageData(0, 0, width, height);
  for (let j = 0; j < height; j++) {
    for (let i = 0; i < width; i++) {
      if (i < w && j < h) continue;
      const from = 4 * (Math.min(j, h - 1) * width + Math.min(i, w - 1));
      image.data.set(image.data.subarray(from, from + 4), 4 * (j * width + i));
    }
  }
  return image.data;
}

function outputAt(out, layout, width, height) {
  // the output tensor's pixel (i, j), channel c, as a function
  const plane = width * height;
  return layout === 'nhwc' ? (i, j, c) => out[3 * (j * width + i) + c] : (i, j, c) => out[c * plane + j * width + i];
}

// The style input beside the image (page.style): a multi-style network's one-hot style weights, a style image,
// or the style vector the predictor made of one.
function extraInputs(page, style) {
  if (!page.style) return [];
  if (page.style.kind === 'weights') {
    const weights = new Float32Array(page.style.count);
    weights[style.index || 0] = 1;
    return [{data: weights, dims: [page.style.count], dtype: 'float32'}];
  }
  if (page.style.kind === 'vector') return [{data: style.vector, dims: [style.vector.length], dtype: 'float32'}];
  const side = page.style.size;
  return [toTensor(readPixels(style.image, side, side, 0, 0, true), side, side, page.layout)];
}

// The style vector of a style image: its centre square at the predictor's side, NHWC, through the predictor.
async function styleVector(predictor, page, bitmap) {
  const side = page.style.size;
  const pixels = readPixels(bitmap, side, side, 0, 0, true);
  const [out] = await predictor.run([toTensor(pixels, side, side, 'nhwc')]);
  return Float32Array.from(out.data);
}

// Stylize an ImageBitmap at its own size: whole where the artifact takes any size, else in overlapping tiles of
// its fixed size, blended linearly (each tile normalises with its own statistics).
export async function stylize(model, page, bitmap, style = {}) {
  const width = bitmap.width, height = bitmap.height;
  const extra = extraInputs(page, style);
  const result = new Float32Array(3 * width * height), weight = new Float32Array(width * height);
  const fixed = page.fixed;
  const tw = fixed ? fixed[1] : Math.ceil(width / MULTIPLE) * MULTIPLE;
  const th = fixed ? fixed[0] : Math.ceil(height / MULTIPLE) * MULTIPLE;
  const overlap = fixed ? Math.floor(Math.min(tw, th) / 4) : 0;
  const starts = (size, tile) => {
    if (size <= tile) return [0];
    const list = [];
    for (let s = 0; s + tile < size; s += tile - overlap) list.push(s);
    list.push(size - tile);
    return list;
  };
  for (const y of starts(height, th)) {
    for (const x of starts(width, tw)) {
      const input = toTensor(readPixels(bitmap, tw, th, x, y), tw, th, page.layout);
      const [out] = await model.run([input, ...extra]);
      const at = outputAt(out.data, page.layout, tw, th);
      for (let j = 0; j < Math.min(th, height - y); j++) {
        for (let i = 0; i < Math.min(tw, width - x); i++) {
          const ramp = overlap ? Math.min(1, (Math.min(i, j, tw - 1 - i, th - 1 - j) + 1) / overlap) : 1;
          const k = (y + j) * width + (x + i);
          for (let c = 0; c < 3; c++) result[3 * k + c] += ramp * at(i, j, c);
          weight[k] += ramp;
        }
      }
    }
  }
  const pixels = new ImageData(width, height);
  for (let k = 0; k < width * height; k++) {
    for (let c = 0; c < 3; c++) {
      pixels.data[4 * k + c] = Math.round(255 * Math.min(1, Math.max(0, result[3 * k + c] / weight[k])));
    }
    pixels.data[4 * k + 3] = 255;
  }
  return pixels;
}

// The exported page: page.json says which artifact, runtime and inputs; the DOM is index.html's.
export async function startPage() {
  const $ = id => document.getElementById(id);
  const page = await (await fetch('page.json')).json();
  $('title').textContent = `${page.title} on ${page.runtime}`;
  const model = await loadModel(page.runtime, page.artifact, page.threads || undefined);
  $('status').textContent = `ready: ${model.info.provider}, ${model.info.threads} thread(s)`;
  const kind = page.style && page.style.kind;
  const predictor = kind === 'vector' ? await loadModel('onnxruntime-web', page.style.predictor, model.info.threads)
                                      : null;
  if (kind === 'weights') {
    $('style-picker').hidden = false;
    for (let k = 0; k < page.style.count; k++) $('style').add(new Option(`style ${k}`, k));
  }
  if (kind === 'image' || kind === 'vector') $('style-file-picker').hidden = false;
  const run = async () => {
    const photo = $('photo').files[0];
    if (!photo) return;
    const style = {index: Number($('style').value || 0)};
    if (kind === 'image' || kind === 'vector') {
      if (!$('style-file').files[0]) { $('status').textContent = 'choose a style image'; return; }
      style.image = await createImageBitmap($('style-file').files[0]);
      if (predictor) style.vector = await styleVector(predictor, page, style.image);
    }
    const bitmap = await createImageBitmap(photo);
    $('status').textContent = `stylizing ${bitmap.width}x${bitmap.height}...`;
    const start = performance.now();
    const pixels = await stylize(model, page, bitmap, style);
    const ms = performance.now() - start;
    const canvas = $('output');
    canvas.width = pixels.width; canvas.height = pixels.height;
    canvas.getContext('2d').putImageData(pixels, 0, 0);
    $('status').textContent = `done: ${bitmap.width}x${bitmap.height} in ${ms.toFixed(0)} ms on ${page.runtime}`;
    document.body.dataset.ms = ms.toFixed(1);
    document.body.dataset.state = 'done';
  };
  for (const id of ['photo', 'style', 'style-file']) $(id).addEventListener('change', run);
  document.body.ondragover = e => e.preventDefault();
  document.body.ondrop = e => { e.preventDefault(); $('photo').files = e.dataTransfer.files; run(); };
  document.body.dataset.state = 'ready';
}
