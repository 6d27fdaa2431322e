import { useCallback, useEffect, useRef, useState } from 'react';
import type { Page } from './api/client';

/** A value loaded from the API: loading, error (the server's), data, and a reload that keeps showing the old data. */
export interface Loaded<T> {
  data: T | undefined;
  error: unknown;
  loading: boolean;
  reload(): void;
}

export function useLoad<T>(load: (signal: AbortSignal) => Promise<T>, deps: readonly unknown[]): Loaded<T> {
  const [state, setState] = useState<{ data: T | undefined; error: unknown; loading: boolean }>({ data: undefined, error: undefined, loading: true });
  const [generation, setGeneration] = useState(0);
  const loadRef = useRef(load);
  loadRef.current = load;

  // The loader is read through a ref, so a new closure each render does not reload; `deps` say when to.
  useEffect(() => {
    const controller = new AbortController();
    setState((previous) => ({ ...previous, loading: true, error: undefined }));
    loadRef
      .current(controller.signal)
      .then((data) => {
        if (!controller.signal.aborted) setState({ data, error: undefined, loading: false });
      })
      .catch((error: unknown) => {
        if (!controller.signal.aborted) setState((previous) => ({ data: previous.data, error, loading: false }));
      });
    return () => controller.abort();
  }, [...deps, generation]);

  const reload = useCallback(() => setGeneration((value) => value + 1), []);
  return { ...state, reload };
}

/**
 * Continuation-token paging: the tokens of the pages seen so far are kept, so "Previous" re-asks for an earlier page
 * with the token that produced it. A new query (key) starts again at page one.
 */
export interface Paged<T> extends Loaded<Page<T>> {
  pageIndex: number;
  hasNext: boolean;
  next(): void;
  previous(): void;
}

export function usePaged<T>(key: string, load: (continuation: string | undefined, signal: AbortSignal) => Promise<Page<T>>): Paged<T> {
  const [state, setState] = useState<{ key: string; tokens: Array<string | undefined>; index: number }>({ key, tokens: [undefined], index: 0 });
  // A new query starts again at page one, in the same render (a token is bound to the query that made it).
  const current = state.key === key ? state : { key, tokens: [undefined], index: 0 };
  if (current !== state) setState(current);
  const token = current.tokens[current.index];
  const loaded = useLoad((signal) => load(token, signal), [key, current.index, token]);
  const continuation = loaded.data?.continuation;
  return {
    ...loaded,
    pageIndex: current.index,
    hasNext: continuation !== undefined && !loaded.loading,
    next() {
      if (continuation === undefined) return;
      setState({ key, tokens: [...current.tokens.slice(0, current.index + 1), continuation], index: current.index + 1 });
    },
    previous() {
      setState({ ...current, index: Math.max(0, current.index - 1) });
    },
  };
}

/** Runs an action once at a time, keeping its error for display. */
export function useAction(): { busy: boolean; error: unknown; run<T>(action: () => Promise<T>): Promise<T | undefined>; clear(): void } {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(undefined);
  const run = useCallback(async <T,>(action: () => Promise<T>): Promise<T | undefined> => {
    setBusy(true);
    setError(undefined);
    try {
      return await action();
    } catch (caught) {
      setError(caught);
      return undefined;
    } finally {
      setBusy(false);
    }
  }, []);
  return { busy, error, run, clear: () => setError(undefined) };
}

/** A debounced copy of a value (search boxes query as the user stops typing). */
export function useDebounced<T>(value: T, delayMs = 300): T {
  const [debounced, setDebounced] = useState(value);
  useEffect(() => {
    const timer = setTimeout(() => setDebounced(value), delayMs);
    return () => clearTimeout(timer);
  }, [value, delayMs]);
  return debounced;
}
