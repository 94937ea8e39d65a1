/** A synthesised set through the engine layer: ModelSet -> OrtBackend with the manifest's signatures. */
import t from 'tap';
import { tensor } from '../../src/engine/backend.js';
import { headDim, STAGES } from '../../src/engine/contract.js';
import { ModelSet } from '../../src/engine/modelset.js';
import { OrtBackend } from '../../src/engine/onnxruntime.js';
import { synthesize } from '../../tools/export/synth.js';
import { randn } from './helpers.js';

t.test('every tiny stage opens in the ONNX Runtime backend; the LLM runs prefill then decode', async (t) => {
  const dir = t.testdir();
  await synthesize({ config: 'tiny', seed: 2, out: dir });
  const set = await ModelSet.open(dir);
  const ort = new OrtBackend({ threads: 1 });
  for (const stage of STAGES) {
    const s = await ort.open(set.stagePath(stage), { stage, signature: set.manifest.stages[stage]!.signature });
    t.same([...s.inputNames], set.manifest.stages[stage]!.signature.inputs.map((i) => i.name), stage);
    await s.dispose();
  }
  const a = set.architecture;
  const { hidden: H, layers, kvHeads } = a.llm;
  const hd = headDim(a);
  const llm = await ort.open(set.stagePath('llm'), { stage: 'llm', signature: set.manifest.stages.llm!.signature });
  t.teardown(() => llm.dispose());
  const empty = () => tensor('float32', new Float32Array(0), [layers, 1, kvHeads, 0, hd]);
  const pre = await llm.run({ inputs_embeds: tensor('float32', randn(4 * H, 1), [1, 4, H]), past_keys: empty(), past_values: empty() });
  t.same(pre.present_keys!.dims, [layers, 1, kvHeads, 4, hd]);
  const dec = await llm.run({ inputs_embeds: tensor('float32', randn(H, 2), [1, 1, H]), past_keys: pre.present_keys!, past_values: pre.present_values! });
  t.same(dec.present_values!.dims, [layers, 1, kvHeads, 5, hd]);
  t.same(dec.logits!.dims, [1, 1, a.llm.vocab]);
  await t.rejects(llm.run({ inputs_embeds: tensor('float32', randn(2 * 3, 3), [1, 2, 3]), past_keys: empty(), past_values: empty() }), { code: 'BAD_INPUT' });
});
