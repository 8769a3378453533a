//! Expansion of `#[golem::task]`.
//!
//! ```ignore
//! #[golem::task]
//! pub fn render(scene: &Scene, tile: Tile) -> Vec<u8> { body }
//! ```
//! becomes a unit struct `render` (so the name is a value that can be handed to `par_for`) that
//! implements `golem::Task` and dereferences to the original function, so `render(&scene, tile)`
//! still calls it natively. On `wasm32` the expansion adds the export the sandbox calls.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, LitStr, Path, ReturnType, Token, Type};

/// Entry point: on error, emit the original function untouched plus the spanned errors, so the
/// rest of the crate (and an IDE) still sees the function.
pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let func: ItemFn = match syn::parse2(item.clone()) {
        Ok(func) => func,
        Err(error) => {
            let error = syn::Error::new(
                error.span(),
                "#[golem::task] goes on a free function: `fn name(input: T) -> U`",
            );
            return with_errors(item, error);
        }
    };
    let args: TaskArgs = match syn::parse2(args) {
        Ok(args) => args,
        Err(error) => return with_errors(item, error),
    };
    match Signature::check(&func) {
        Ok(signature) => generate(&args, &func, &signature),
        Err(error) => with_errors(item, error),
    }
}

fn with_errors(item: TokenStream, error: syn::Error) -> TokenStream {
    let error = error.to_compile_error();
    quote! { #item #error }
}

/// Arguments of the attribute: `#[golem::task(crate = "path::to::golem")]`.
struct TaskArgs {
    krate: Path,
}

impl Parse for TaskArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut krate: Path = syn::parse_quote!(::golem);
        while !input.is_empty() {
            let key: syn::Ident = input.call(syn::Ident::parse_any)?;
            if key != "crate" {
                return Err(syn::Error::new(
                    key.span(),
                    "unknown argument; #[golem::task] accepts only `crate = \"path\"`",
                ));
            }
            input.parse::<Token![=]>()?;
            let path: LitStr = input.parse()?;
            krate = path.parse()?;
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
        }
        Ok(Self { krate })
    }
}

/// The checked shape of a task function.
struct Signature {
    /// The `T` of an optional leading `&T` context argument.
    context: Option<Type>,
    /// The type of the one input.
    input: Type,
    /// The return type, `()` when the function returns nothing.
    output: Type,
}

impl Signature {
    fn check(func: &ItemFn) -> syn::Result<Self> {
        let sig = &func.sig;
        let mut errors: Vec<syn::Error> = Vec::new();
        let mut fail = |span: Span, message: &str| errors.push(syn::Error::new(span, message));

        if let Some(token) = &sig.asyncness {
            fail(
                token.span(),
                "a golem task cannot be `async`: it runs to completion inside the sandbox; \
                 make it a plain `fn`",
            );
        }
        if let Some(token) = &sig.unsafety {
            fail(token.span(), "a golem task cannot be `unsafe`");
        }
        if let Some(token) = &sig.constness {
            fail(token.span(), "a golem task cannot be `const`");
        }
        if let Some(abi) = &sig.abi {
            fail(
                abi.span(),
                "a golem task cannot declare an ABI; golem generates its export",
            );
        }
        if let Some(variadic) = &sig.variadic {
            fail(variadic.span(), "a golem task cannot be variadic");
        }
        if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
            fail(
                sig.generics.span(),
                "a golem task cannot be generic: it is compiled to one WebAssembly export; \
                 write a task per concrete type",
            );
        }

        let mut typed = Vec::new();
        for arg in &sig.inputs {
            match arg {
                FnArg::Receiver(receiver) => fail(
                    receiver.span(),
                    "a golem task is a free function: `self` cannot be shipped to a provider",
                ),
                FnArg::Typed(pat) => typed.push(pat),
            }
        }

        let mut context = None;
        let mut input = None;
        for (position, arg) in typed.iter().enumerate() {
            let ty = &*arg.ty;
            let is_context_slot = position == 0 && typed.len() >= 2;
            if contains_impl_trait(ty) {
                fail(
                    ty.span(),
                    "a golem task cannot take `impl Trait`: name a concrete type",
                );
                continue;
            }
            match ty {
                Type::Reference(reference) if reference.mutability.is_some() => fail(
                    ty.span(),
                    "a golem task cannot take `&mut`: nothing flows back through a reference \
                     from the sandbox; take the value and return the new one",
                ),
                Type::Reference(reference) if is_context_slot => {
                    context = Some((*reference.elem).clone());
                }
                _ if is_context_slot => fail(
                    ty.span(),
                    "with two arguments, the first is the shared context and must be a \
                     reference `&T`",
                ),
                _ if position >= 2 => fail(
                    ty.span(),
                    "a golem task takes one input after the optional `&T` context; bundle \
                     several values into a tuple or a struct",
                ),
                Type::Reference(_) => fail(
                    ty.span(),
                    "a golem task takes its input by value; only the first of two arguments may \
                     be a reference, the shared context `&T`",
                ),
                _ => input = Some(ty.clone()),
            }
        }
        if sig.inputs.is_empty() {
            fail(
                sig.paren_token.span.join(),
                "a golem task takes one input (after an optional `&T` context): `fn name(input: T)`",
            );
        }

        let output = match &sig.output {
            ReturnType::Default => syn::parse_quote!(()),
            ReturnType::Type(_, ty) => {
                if contains_impl_trait(ty) {
                    fail(
                        ty.span(),
                        "a golem task cannot return `impl Trait`: name a concrete type",
                    );
                }
                (**ty).clone()
            }
        };

        let mut errors = errors.into_iter();
        if let Some(mut first) = errors.next() {
            first.extend(errors);
            return Err(first);
        }
        Ok(Self {
            context,
            input: input.expect("checked above: exactly one input when there are no errors"),
            output,
        })
    }
}

fn contains_impl_trait(ty: &Type) -> bool {
    struct Finder(bool);
    impl<'ast> syn::visit::Visit<'ast> for Finder {
        fn visit_type_impl_trait(&mut self, _: &'ast syn::TypeImplTrait) {
            self.0 = true;
        }
    }
    let mut finder = Finder(false);
    syn::visit::visit_type(&mut finder, ty);
    finder.0
}

fn generate(args: &TaskArgs, func: &ItemFn, signature: &Signature) -> TokenStream {
    let krate = &args.krate;
    let name = &func.sig.ident;
    let name_str = name.to_string();
    let vis = &func.vis;
    let export_name = format!("golem_task_{name_str}");
    let context_export_name = format!("golem_context_{name_str}");
    let implementation = format_ident!("__golem_task_{}", name);

    let (doc_attrs, other_attrs): (Vec<_>, Vec<_>) = func
        .attrs
        .iter()
        .partition(|attr| attr.path().is_ident("doc"));

    let Signature {
        context,
        input,
        output,
    } = signature;
    let context_ty = context.clone().unwrap_or_else(|| syn::parse_quote!(()));
    let inputs = &func.sig.inputs;
    let block = &func.block;

    // Spanned at the user's types so an unsupported type is reported where it is written.
    let assert_data = |ty: &Type| {
        quote_spanned! {ty.span()=>
            #krate::__private::assert_task_data::<#ty>();
        }
    };
    let asserts: Vec<TokenStream> = context
        .iter()
        .chain([input, output])
        .map(assert_data)
        .collect();

    let (fn_pointer, call) = match context {
        Some(context) => (
            quote! { fn(&#context, #input) -> #output },
            quote! { #implementation(context, input) },
        ),
        None => (
            quote! { fn(#input) -> #output },
            quote! { { let () = *context; #implementation(input) } },
        ),
    };

    quote! {
        #(#doc_attrs)*
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy)]
        #vis struct #name;

        const _: () = {
            #(#other_attrs)*
            // A context is decoded into an owned value, so `&Vec<T>` is what a task takes.
            #[allow(clippy::ptr_arg)]
            fn #implementation(#inputs) -> #output #block

            #[allow(dead_code)]
            fn __golem_assert_task_data() {
                #(#asserts)*
            }

            impl ::core::ops::Deref for #name {
                type Target = #fn_pointer;

                fn deref(&self) -> &Self::Target {
                    const NATIVE: #fn_pointer = #implementation;
                    &NATIVE
                }
            }

            impl ::core::fmt::Debug for #name {
                fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                    f.write_str(concat!("golem task `", #name_str, "`"))
                }
            }

            impl #krate::Task for #name {
                type Context = #context_ty;
                type Input = #input;
                type Output = #output;

                const NAME: &'static str = #name_str;

                fn call(context: &Self::Context, input: Self::Input) -> Self::Output {
                    #call
                }

                #[cfg(not(target_arch = "wasm32"))]
                fn module() -> &'static #krate::GuestModule {
                    static MODULE: #krate::GuestModule = #krate::GuestModule::from_build(
                        include_bytes!(concat!(
                            env!(
                                "OUT_DIR",
                                "a crate with #[golem::task] functions needs a build.rs that \
                                 calls `golem_build::build_tasks()`"
                            ),
                            "/golem-guest.wasm"
                        )),
                        include_bytes!(concat!(env!("OUT_DIR"), "/golem-guest.blake3")),
                    );
                    &MODULE
                }
            }

            #[cfg(target_arch = "wasm32")]
            static __GOLEM_CONTEXT: #krate::__private::guest::KeptContext<#context_ty> =
                #krate::__private::guest::KeptContext::new();

            #[cfg(target_arch = "wasm32")]
            #[unsafe(export_name = #context_export_name)]
            extern "C" fn __golem_context() {
                #krate::__private::guest::keep_context::<#name>(&__GOLEM_CONTEXT);
            }

            #[cfg(target_arch = "wasm32")]
            #[unsafe(export_name = #export_name)]
            extern "C" fn __golem_export() {
                #krate::__private::guest::run::<#name>(&__GOLEM_CONTEXT);
            }
        };
    }
}
