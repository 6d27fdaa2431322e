import { useState, type ReactNode } from 'react';
import { useAction, type Loaded } from '../hooks';
import { useSession } from '../session';
import { ConfirmDialog, Empty, ErrorBanner, Loading } from './ui';

/**
 * A settings list: the named items of one collection (linked hubs, credential policies, access policies) in a table,
 * each row with its own action (Edit, or Keys for an access policy) and a remove button, and the "remove X?"
 * confirmation that deletes it through the service API and reloads.
 */
export interface ItemColumn<T> {
  header: ReactNode;
  /** `numeric` right-aligns; `hide-narrow` drops the column on a phone. */
  className?: string;
  cell(item: T): ReactNode;
}

/** A row's button beside the remove button: its word, its accessible name for the item, what it does. */
export interface RowAction<T> {
  label: string;
  describe(name: string): string;
  run(item: T): void;
}

/** The usual row action: Edit, opening the item's dialog. */
export function editAction<T>(run: (item: T) => void): RowAction<T> {
  return { label: 'Edit', describe: (name) => `Edit ${name}`, run };
}

export function ItemTable<T>(props: {
  loaded: Loaded<T[]>;
  columns: ReadonlyArray<ItemColumn<T>>;
  nameOf(item: T): string;
  /** What the list says while it has no item. */
  empty: { title: string; text: ReactNode };
  action: RowAction<T>;
  removal: Removal;
  rowTestId?(item: T): string;
}) {
  const { loaded, columns, nameOf, action, removal } = props;
  const items = loaded.data ?? [];
  return (
    <>
      <ErrorBanner error={loaded.error} onRetry={loaded.reload} />
      {loaded.data === undefined && loaded.loading ? (
        <Loading />
      ) : items.length === 0 && loaded.error === undefined ? (
        <Empty title={props.empty.title}>{props.empty.text}</Empty>
      ) : (
        <div className="table-wrap">
          <table>
            <thead>
              <tr>
                {columns.map((column, index) => (
                  <th scope="col" key={index} className={column.className}>
                    {column.header}
                  </th>
                ))}
                <th scope="col">
                  <span className="visually-hidden">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {items.map((item) => {
                const name = nameOf(item);
                return (
                  <tr key={name} data-testid={props.rowTestId?.(item)}>
                    {columns.map((column, index) => (
                      <td key={index} className={column.className}>
                        {column.cell(item)}
                      </td>
                    ))}
                    <td className="row-actions">
                      <button type="button" className="button secondary small" onClick={() => action.run(item)} aria-label={action.describe(name)}>
                        {action.label}
                      </button>
                      <button type="button" className="button danger small" onClick={() => removal.ask(name)} aria-label={`${removal.verb} ${name}`}>
                        {removal.verb}
                      </button>
                    </td>
                  </tr>
                );
              })}
            </tbody>
          </table>
        </div>
      )}
    </>
  );
}

/** The remove button's word and the confirmation it opens; made by useRemoval, shown by RemovalDialog. */
export interface Removal {
  readonly verb: string;
  /** The item being confirmed, if any. */
  readonly pending: string | undefined;
  ask(name: string): void;
  readonly dialog: { busy: boolean; error: unknown; confirm(): void; cancel(): void };
}

/** DELETE `collection/name` once confirmed, then `reload`; a refusal stays in the dialog with the server's error. */
export function useRemoval(collection: string, verb: string, reload: () => void): Removal {
  const session = useSession();
  const [pending, setPending] = useState<string | undefined>(undefined);
  const action = useAction();
  return {
    verb,
    pending,
    ask: setPending,
    dialog: {
      busy: action.busy,
      error: action.error,
      confirm() {
        if (pending === undefined) return;
        void action
          .run(async () => {
            await session.client.delete([collection, pending]);
            return true;
          })
          .then((done) => {
            if (done !== true) return;
            setPending(undefined);
            reload();
          });
      },
      cancel() {
        setPending(undefined);
        action.clear();
      },
    },
  };
}

export function RemovalDialog({ removal, title, children }: { removal: Removal; title: (name: string) => string; children: ReactNode }) {
  return (
    <ConfirmDialog
      open={removal.pending !== undefined}
      title={title(removal.pending ?? '')}
      confirmLabel={removal.verb}
      danger
      busy={removal.dialog.busy}
      error={removal.dialog.error}
      onConfirm={removal.dialog.confirm}
      onClose={removal.dialog.cancel}
    >
      {children}
    </ConfirmDialog>
  );
}
