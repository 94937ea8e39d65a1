/** embed: the LLM's token embedding table, input_ids [1, T] -> embeds [1, T, H] (one Gather). */
import type { Architecture } from '../../../src/engine/contract.js';
import { Model } from '../onnx/layers.js';
import { Rng } from '../onnx/random.js';
import { stageGraph } from './io.js';

export function buildEmbed(a: Architecture, rng: Rng): Model {
  const { model: m, inputs, finish } = stageGraph('embed', a, rng);
  const table = m.param('embed_tokens.weight', [a.llm.vocab, a.llm.hidden], { std: 1 });
  return finish({ embeds: m.g.op('Gather', [table, inputs.input_ids!], { axis: 0 }) });
}
