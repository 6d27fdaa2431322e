/**
 * The resilience suite's two sizes: the bounded one CI runs, and a longer one for a release or a soak
 * (`PROVISIOND_RESILIENCE_LONG=1 npm test`, README "Resilience suite"). Randomness is seeded, so a failure repeats.
 */
export const LONG = /^(1|true|yes)$/i.test(process.env.PROVISIOND_RESILIENCE_LONG ?? '');

/** The seed: PROVISIOND_RESILIENCE_SEED when given (to repeat a failing run), else fixed. */
export const SEED = Number(process.env.PROVISIOND_RESILIENCE_SEED ?? '') || 20261202;

/** mulberry32: a small deterministic generator in [0, 1). */
export function seededRandom(seed: number = SEED): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
