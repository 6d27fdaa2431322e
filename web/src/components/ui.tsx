import { useEffect, useId, useRef, useState, type ReactNode } from 'react';
import { ApiError } from '../api/client';
import type { Paged } from '../hooks';

/** Small shared pieces: loading and empty states, the server's errors, badges, dialogs, paging, secrets. */
export function Loading({ label = 'Loading…' }: { label?: string }) {
  return (
    <div className="loading" role="status" aria-live="polite">
      <span className="spinner" aria-hidden="true" />
      <span>{label}</span>
    </div>
  );
}

export function describeError(error: unknown): { title: string; detail: string | undefined } {
  if (error instanceof ApiError) {
    if (error.kind === 'missingRight' && error.missingRight !== undefined) {
      return { title: `Your policy lacks the ${error.missingRight} right.`, detail: error.message };
    }
    if (error.kind === 'unauthenticated') {
      return { title: 'The server no longer accepts this sign-in.', detail: `${error.message}. Sign out and sign in again.` };
    }
    if (error.status === 412) {
      return {
        title: 'Someone changed this after you loaded it, so your change was not saved.',
        detail: `Load the current version and make your change again; nothing of theirs is overwritten. (error ${error.errorCode ?? 412}: ${error.message})`,
      };
    }
    const code = error.errorCode === undefined ? '' : ` (error ${error.errorCode}${error.trackingId === undefined ? '' : `, tracking ID ${error.trackingId}`})`;
    return { title: error.message, detail: code === '' ? undefined : code.trim() };
  }
  if (error instanceof Error) return { title: error.message, detail: undefined };
  return { title: String(error), detail: undefined };
}

/** A 412: the entry changed since it was loaded (its etag no longer matches). */
export function isConflict(error: unknown): boolean {
  return error instanceof ApiError && error.status === 412;
}

export function ErrorBanner({ error, onRetry, retryLabel = 'Try again' }: { error: unknown; onRetry?: () => void; retryLabel?: string }) {
  if (error === undefined || error === null) return null;
  const { title, detail } = describeError(error);
  return (
    <div className="banner banner-error" role="alert">
      <div>
        <strong>{title}</strong>
        {detail !== undefined && <div className="muted small">{detail}</div>}
      </div>
      {onRetry !== undefined && (
        <button type="button" className="button secondary small" onClick={onRetry}>
          {retryLabel}
        </button>
      )}
    </div>
  );
}

export function Notice({ kind = 'info', children }: { kind?: 'info' | 'success' | 'warning'; children: ReactNode }) {
  return (
    <div className={`banner banner-${kind}`} role={kind === 'warning' ? 'alert' : 'status'}>
      <div>{children}</div>
    </div>
  );
}

export function Empty({ title, children }: { title: string; children?: ReactNode }) {
  return (
    <div className="empty">
      <p className="empty-title">{title}</p>
      {children !== undefined && <div className="muted">{children}</div>}
    </div>
  );
}

export function PageHeader({ title, subtitle, actions }: { title: ReactNode; subtitle?: ReactNode; actions?: ReactNode }) {
  return (
    <header className="page-header">
      <div className="page-title">
        <h1>{title}</h1>
        {subtitle !== undefined && <p className="muted">{subtitle}</p>}
      </div>
      {actions !== undefined && <div className="actions">{actions}</div>}
    </header>
  );
}

export function Section({ title, actions, children, id }: { title: ReactNode; actions?: ReactNode; children: ReactNode; id?: string }) {
  const headingId = useId();
  return (
    <section className="card" aria-labelledby={headingId} {...(id === undefined ? {} : { id })}>
      <div className="card-header">
        <h2 id={headingId}>{title}</h2>
        {actions !== undefined && <div className="actions">{actions}</div>}
      </div>
      {children}
    </section>
  );
}

const BADGE_KIND: Record<string, string> = {
  enabled: 'ok',
  assigned: 'ok',
  success: 'ok',
  completed: 'ok',
  verified: 'ok',
  disabled: 'off',
  unassigned: 'off',
  failed: 'bad',
  failure: 'bad',
  partiallyCompleted: 'warn',
  assigning: 'busy',
  running: 'busy',
  unverified: 'warn',
};

export function Badge({ value, label }: { value: string; label?: string }) {
  return <span className={`badge badge-${BADGE_KIND[value] ?? 'neutral'}`}>{label ?? value}</span>;
}

export function DateTime({ value }: { value: string | undefined | null }) {
  if (value === undefined || value === null || value === '') return <span className="muted">—</span>;
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return <span>{value}</span>;
  return (
    <time dateTime={value} title={value}>
      {date.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'medium' })}
    </time>
  );
}

export function Fields({ rows }: { rows: Array<[string, ReactNode] | false | undefined> }) {
  return (
    <dl className="fields">
      {rows
        .filter((row): row is [string, ReactNode] => Array.isArray(row))
        .map(([name, value]) => (
          <div className="field-row" key={name}>
            <dt>{name}</dt>
            <dd>{value === undefined || value === null || value === '' ? <span className="muted">—</span> : value}</dd>
          </div>
        ))}
    </dl>
  );
}

export function CopyButton({ text, label = 'Copy' }: { text: string; label?: string }) {
  const [copied, setCopied] = useState(false);
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(text);
      setCopied(true);
      setTimeout(() => setCopied(false), 1500);
    } catch {
      setCopied(false);
    }
  };
  return (
    <button type="button" className="button secondary small" onClick={() => void copy()} aria-label={`${label} to the clipboard`}>
      {copied ? 'Copied' : label}
    </button>
  );
}

/** A secret shown only when asked for. */
export function Secret({ label, value, testId }: { label: string; value: string; testId?: string }) {
  const [shown, setShown] = useState(false);
  return (
    <div className="secret">
      <code className="secret-value" aria-label={label} {...(testId === undefined ? {} : { 'data-testid': testId })}>
        {shown ? value : '••••••••••••••••••••'}
      </code>
      <button type="button" className="button secondary small" onClick={() => setShown((value) => !value)} aria-pressed={shown}>
        {shown ? 'Hide' : 'Show'}
      </button>
      <CopyButton text={value} />
    </div>
  );
}

export function JsonBlock({ value, label }: { value: unknown; label?: string }) {
  return (
    <pre className="json" tabIndex={0} {...(label === undefined ? {} : { 'aria-label': label })}>
      {JSON.stringify(value, null, 2)}
    </pre>
  );
}

export function Progress({ done, total, label }: { done: number; total: number; label: string }) {
  const percent = total > 0 ? Math.round((done / total) * 100) : 0;
  return (
    <div className="progress">
      <progress max={total > 0 ? total : 1} value={total > 0 ? done : 0} aria-label={label} />
      <span className="small muted">
        {total > 0 ? `${done} of ${total} (${percent}%)` : 'Starting…'}
      </span>
    </div>
  );
}

export function Pager<T>({ paged, count }: { paged: Paged<T>; count: number }) {
  if (paged.pageIndex === 0 && !paged.hasNext) return null;
  return (
    <nav className="pager" aria-label="Pages">
      <button type="button" className="button secondary small" onClick={paged.previous} disabled={paged.pageIndex === 0 || paged.loading}>
        ← Previous
      </button>
      <span className="small muted">
        Page {paged.pageIndex + 1} · {count} shown
      </span>
      <button type="button" className="button secondary small" onClick={paged.next} disabled={!paged.hasNext}>
        Next →
      </button>
    </nav>
  );
}

/**
 * A modal dialog on the native <dialog> element: focus moves into it, Escape closes it, the page behind is inert.
 */
export function Dialog({ open, title, onClose, children, footer }: { open: boolean; title: string; onClose: () => void; children: ReactNode; footer: ReactNode }) {
  const ref = useRef<HTMLDialogElement>(null);
  const titleId = useId();
  useEffect(() => {
    const dialog = ref.current;
    if (dialog === null) return;
    if (open && !dialog.open) dialog.showModal();
    if (!open && dialog.open) dialog.close();
  }, [open]);
  return (
    <dialog ref={ref} className="dialog" aria-labelledby={titleId} onClose={onClose} onCancel={onClose}>
      {open && (
        <>
          <h2 id={titleId}>{title}</h2>
          <div className="dialog-body">{children}</div>
          <div className="dialog-footer">{footer}</div>
        </>
      )}
    </dialog>
  );
}

/** "Delete X?" with a Cancel that has the focus first. */
export function ConfirmDialog(props: {
  open: boolean;
  title: string;
  confirmLabel: string;
  danger?: boolean;
  busy?: boolean;
  error?: unknown;
  /** When set, the confirm button stays disabled until this text is typed. */
  typeToConfirm?: string;
  onConfirm: () => void;
  onClose: () => void;
  children: ReactNode;
}) {
  const [typed, setTyped] = useState('');
  const inputId = useId();
  useEffect(() => {
    if (!props.open) setTyped('');
  }, [props.open]);
  const ready = props.typeToConfirm === undefined || typed === props.typeToConfirm;
  return (
    <Dialog
      open={props.open}
      title={props.title}
      onClose={props.onClose}
      footer={
        <>
          <button type="button" className="button secondary" onClick={props.onClose} autoFocus={props.typeToConfirm === undefined}>
            Cancel
          </button>
          <button
            type="button"
            className={`button ${props.danger === true ? 'danger' : 'primary'}`}
            onClick={props.onConfirm}
            disabled={!ready || props.busy === true}
          >
            {props.busy === true ? 'Working…' : props.confirmLabel}
          </button>
        </>
      }
    >
      {props.children}
      {props.typeToConfirm !== undefined && (
        <div className="form-row">
          <label htmlFor={inputId}>
            Type <code>{props.typeToConfirm}</code> to confirm
          </label>
          <input id={inputId} value={typed} onChange={(event) => setTyped(event.target.value)} autoComplete="off" spellCheck={false} autoFocus />
        </div>
      )}
      <ErrorBanner error={props.error} />
    </Dialog>
  );
}

/** Shown instead of a section the policy cannot use. */
export function Lacks({ right, what }: { right: string; what: string }) {
  return (
    <div className="banner banner-info" role="note">
      <div>
        Your policy lacks the <strong>{right}</strong> right, so {what} is hidden.
      </div>
    </div>
  );
}

/** Saves text as a file the browser downloads (export bundles, receipts). */
export function downloadFile(name: string, text: string, type = 'application/json'): void {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const anchor = document.createElement('a');
  anchor.href = url;
  anchor.download = name;
  anchor.rel = 'noopener';
  document.body.append(anchor);
  anchor.click();
  anchor.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
